"""Reptile-style template learning (paper section 2.2, eqs. 8-9).

Each outer step runs the inner loop on a train minibatch with the current
inference template, shows the wrong responses with their standard answers and
the template to the fixed Reptile loss prompt theta_R (one call: the meta
evaluation), and updates the template from it: a backward call on the template
through that evaluation, then a TGD step (protocol ``meta_step="backward"``, eq. 9),
or a TGD step with the evaluation as its feedback (``"direct"``); see ``meta_update``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mtg_local.inner_loop import Trajectory
from mtg_local.meta.meta_update import Artifacts, MetaContext, MetaUpdate, wrong_pairs_block
from mtg_local.prompts import meta_prompts as P


class ReptileTemplate(MetaUpdate):
    """y_T <- TGD.step(y_T, d MetaEvaluation(x, y, y_hat, y_T; theta_R) / d y_T)."""

    target = "template"
    role = P.TEMPLATE_ROLE

    def meta_evaluation(self, ctx: MetaContext, current: Artifacts, trajs: Sequence[Trajectory]) -> str | None:
        block = wrong_pairs_block(ctx.task, trajs, ctx.max_pairs)
        if block is None:
            return None
        return P.REPTILE_LOSS_PROMPT.format(qa_pairs=block, template=current.template.strip())

    def context(
        self, ctx: MetaContext, current: Artifacts, trajs: Sequence[Trajectory], feedback: str | None
    ) -> str | None:
        return P.META_FEEDBACK_CONTEXT.format(feedback=feedback or "")
