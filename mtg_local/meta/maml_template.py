"""MAML-style template learning (paper section 2.2, eq. 7).

The template is updated directly from the inner loop's last textual gradients
with respect to the responses (``Trajectory.gradients[-1]``): no meta
evaluation, one TGD-step call per outer step. The <CONTEXT> lists, up to
``max_meta_pairs``, each response that received a gradient with its question
and that gradient (correct and wrong responses alike, as in eq. 7), taken
round-robin over the minibatch's questions (``spread_over_questions``: every
question once before any repeats under another seed; see
``mtg_local.meta.meta_update``). With T = 0 there are no gradients and the
step is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

from mtg_local.inner_loop import Trajectory
from mtg_local.meta.meta_update import Artifacts, MetaContext, MetaUpdate, spread_over_questions
from mtg_local.prompts import meta_prompts as P


def last_gradient_context(ctx: MetaContext, trajs: Sequence[Trajectory]) -> str | None:
    """The MAML <CONTEXT>: each (question, response, last gradient), or None if none."""
    parts = []
    with_gradient = [t for t in trajs if t.gradients and t.gradients[-1].strip()]
    for t in spread_over_questions(with_gradient)[: ctx.max_pairs]:
        # gradients[k] is feedback on answers[k] (the answer that step k+1 updated).
        k = len(t.gradients) - 1
        response = t.answers[k] if k < len(t.answers) else t.final_answer
        parts.append(
            P.MAML_GRADIENT_CONTEXT.format(
                i=len(parts) + 1,
                question=ctx.task.format_question(t.item.example),
                response=response,
                feedback=t.gradients[-1],
            )
        )
    return P.MAML_CONTEXT_SEPARATOR.join(parts) if parts else None


class MAMLTemplate(MetaUpdate):
    """y_T <- TGD.step(y_T, d Evaluation / d y_hat)."""

    target = "template"
    role = P.TEMPLATE_ROLE

    def meta_evaluation(self, ctx: MetaContext, current: Artifacts, trajs: Sequence[Trajectory]) -> str | None:
        return "" if last_gradient_context(ctx, trajs) is not None else None

    def context(
        self, ctx: MetaContext, current: Artifacts, trajs: Sequence[Trajectory], feedback: str | None
    ) -> str | None:
        return last_gradient_context(ctx, trajs)

    def skip_reason(self) -> str:
        return "no textual gradients in the minibatch (T = 0, or every item stopped early)"
