"""Prompt texts as data, apart from the logic that uses them.

Each ``*_prompts.py`` module holds module-level string constants (and
``str.format`` templates with named fields) for one part of the system, e.g.
``textgrad_prompts`` for the batched TextGrad operations.
"""
