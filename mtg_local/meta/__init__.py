"""metaTextGrad outer loops: learned loss, MAML-style and Reptile-style templates, joint.

``run_train(MetaConfig(...))`` runs one resumable meta-training run; see
``outer_loop`` for the shared driver and ``meta_update`` for the batched
candidate proposal.
"""

from mtg_local.meta.meta_config import METHODS, MetaConfig
from mtg_local.meta.outer_loop import EXIT_REQUEUE, Preempted, StopFlag
from mtg_local.meta.train_run import run_train

__all__ = ["EXIT_REQUEUE", "METHODS", "MetaConfig", "Preempted", "StopFlag", "run_train"]
