"""Adapters that let other libraries' code run on our engines.

* ``engines.adapters.dspy_lm.EngineDSPyLM`` -- a ``dspy.BaseLM`` for DSPy programs
  and optimizers (COPRO, MIPROv2);
* ``engines.adapters.textgrad_engine.TextGradEngine`` -- a TextGrad ``EngineLM``.

Both go through ``engines.coalescer.RequestCoalescer``, so threaded library
code reaches the engine as batches. Importing this package imports neither
dspy nor textgrad; import the submodule you need (its library must be
installed: ``pip install -e '.[dspy]'``; ``textgrad`` is a core dependency).
"""

from engines.adapters.common import (
    chat_messages,
    derive_seed,
    import_textgrad,
    offline_library_env,
    textgrad_log_dir,
)

__all__ = ["chat_messages", "derive_seed", "import_textgrad", "offline_library_env", "textgrad_log_dir"]
