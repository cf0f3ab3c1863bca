"""Learned loss (paper section 2.1, eqs. 5-6): meta-learn the loss prompt theta_L.

Each outer step runs the inner loop on a train minibatch with the current loss
prompt, shows the wrong answers with their standard answers and the loss prompt
to the fixed meta loss prompt theta_meta (one call: the meta evaluation), and
updates the loss prompt from it: a backward call on the loss prompt through that
evaluation, then a TGD step (protocol ``meta_step="backward"``, eq. 6), or a TGD
step with the evaluation as its feedback (``"direct"``); see ``meta_update``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mtg_local.inner_loop import Trajectory
from mtg_local.meta.meta_update import Artifacts, MetaContext, MetaUpdate, wrong_pairs_block
from mtg_local.prompts import meta_prompts as P


class LearnedLoss(MetaUpdate):
    """theta_L <- TGD.step(theta_L, d MetaEvaluation / d theta_L)."""

    target = "loss_prompt"
    role = P.LOSS_PROMPT_ROLE

    def meta_evaluation(self, ctx: MetaContext, current: Artifacts, trajs: Sequence[Trajectory]) -> str | None:
        block = wrong_pairs_block(ctx.task, trajs, ctx.max_pairs)
        if block is None:
            return None
        return P.META_LOSS_PROMPT.format(qa_pairs=block, loss_prompt=current.loss_prompt)

    def context(
        self, ctx: MetaContext, current: Artifacts, trajs: Sequence[Trajectory], feedback: str | None
    ) -> str | None:
        return P.META_FEEDBACK_CONTEXT.format(feedback=feedback or "")
