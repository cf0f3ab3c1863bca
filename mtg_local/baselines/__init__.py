"""Baselines of the paper's Table 2 beside zero-shot CoT and solution optimization.

* ``prompt_optimization``: TextGrad prompt optimization (the system prompt is
  the trained variable) as TextGrad's evaluation script runs it, one engine
  call per phase, its requests built by the installed ``textgrad``
  (``prompt_opt_requests``);
* ``copro`` / ``miprov2``: DSPy's COPRO and MIPROv2 run by the real DSPy
  library on our engines (``engines.adapters.dspy_lm``), with the shared
  program, metric and batched test evaluation in ``dspy_program``;
* ``gepa``: DSPy's GEPA (reflective prompt evolution, later than the paper)
  the same way, with a feedback metric from the task's scoring.

The DSPy modules import dspy; import them only when a DSPy method is asked for.
"""
