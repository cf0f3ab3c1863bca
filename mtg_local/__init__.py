"""mtg-local: metaTextGrad on local open-weight models.

Batched TextGrad-style inner loops, meta-learned loss prompts and inference
templates, the paper's tasks and baselines, runs, reports and the ``mtg`` CLI.
Generation backends live in the separate ``engines`` package.
"""

__version__ = "0.1.0"
