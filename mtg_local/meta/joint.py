"""Joint learning of the loss prompt and the template (the paper's stated future work).

Schedule: **propose both, validate three, keep the best.** Every outer step
runs one train minibatch inner loop with the current (loss prompt, template),
then proposes in the same batched engine calls (one per stage: meta evaluation,
backward, TGD step; ``meta_update``)

* a loss-prompt candidate (theta_meta meta evaluation, backward, TGD step, as learned_loss),
* a template candidate (Reptile-style with theta_R by default, or MAML-style
  from the last gradients with ``joint_template="maml"``),

and, when both exist, their combination "both". All candidates are validated
in ONE inner loop (items tagged by ``InnerItem.group``); the one with the
highest validation accuracy is kept if it beats the best so far (ties: loss
prompt, then template, then both), otherwise all are reverted. Compared with
alternating (odd steps loss, even steps template), every step can improve
either artifact and the interaction of the two is measured, at the cost of
validating up to three candidates per step in the same calls.
"""

from __future__ import annotations

from mtg_local.meta.learned_loss import LearnedLoss
from mtg_local.meta.maml_template import MAMLTemplate
from mtg_local.meta.meta_update import MetaUpdate
from mtg_local.meta.reptile_template import ReptileTemplate


def joint_updates(template_update: str = "reptile") -> list[MetaUpdate]:
    """The updates of one joint step: loss prompt first, then the template."""
    template = ReptileTemplate() if template_update == "reptile" else MAMLTemplate()
    return [LearnedLoss(), template]
