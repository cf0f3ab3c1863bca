"""Throughput benchmarks beyond a single engine call (``mtg bench inner-loop``).

``inner_loop_bench`` runs one inner-loop workload three ways on one engine;
``wrappers`` records and re-shapes batches, ``replay`` re-sends recorded
phases, ``memory`` measures peak RSS of the process tree.
"""
