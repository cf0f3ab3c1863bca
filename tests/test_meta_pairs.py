"""The meta step sees every minibatch question before any question repeats under another seed."""

from __future__ import annotations

import re

from engines.fake_engine import FakeEngine
from mtg_local.inner_loop import DEFAULT_TEMPLATE, InnerItem, Trajectory
from mtg_local.meta.maml_template import last_gradient_context
from mtg_local.meta.meta_update import MetaContext, spread_over_questions, wrong_pairs_block
from mtg_local.tasks.base import Example, Splits
from mtg_local.tasks.word_sorting import INITIAL_LOSS_PROMPT, WordSortingTask

TASK = WordSortingTask(Splits((), (), ()))


def _trajs(n_questions: int, seeds: list[int], *, right=lambda q, s: False, errors=lambda q, s: False):
    """Question-major trajectories, as ``make_items`` builds them; answers name (question, seed)."""
    out = []
    for q in range(n_questions):
        ex = Example(id=f"q{q}", question=f"Sort QID-{q}: b a", answer="a b")
        for s in seeds:
            answer = f"answer of QID-{q} seed {s}"
            out.append(Trajectory(
                InnerItem(ex, s, INITIAL_LOSS_PROMPT, DEFAULT_TEMPLATE), [answer, answer], ["eval"],
                [f"grad QID-{q} seed {s}"], [None], ["boom"] if errors(q, s) else [], answer, None,
                1.0 if right(q, s) else 0.0,
            ))
    return out


def _shown(block: str) -> list[tuple[int, int]]:
    return [(int(q), int(s)) for q, s in re.findall(r"answer of QID-(\d+) seed (\d+)", block)]


def test_round_robin_is_deterministic_and_keeps_item_order_within_a_question():
    trajs = _trajs(3, [0, 1, 2, 3, 4, 5])
    order = [(int(t.item.example.id[1:]), t.item.seed) for t in spread_over_questions(trajs)]
    assert order[:6] == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    assert sorted(order) == sorted((q, s) for q in range(3) for s in range(6))
    assert order == [(int(t.item.example.id[1:]), t.item.seed) for t in spread_over_questions(trajs)]
    assert spread_over_questions([]) == []


def test_wrong_pairs_cover_the_minibatch_with_3_questions_and_6_seeds():
    """Minibatch 3 x 6 seeds, 8 pairs: all three questions, each 2-3 times (was 6 + 2 + 0)."""
    block = wrong_pairs_block(TASK, _trajs(3, [0, 1, 2, 3, 4, 5]), 8)
    shown = _shown(block)
    assert len(shown) == 8
    assert shown == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2), (1, 2)]
    assert "Question 1:" in block and "Question 8:" in block and "Question 9:" not in block


def test_wrong_pairs_skip_right_and_failed_items_before_spreading():
    # question 0 right under seeds 0-1, question 1 failed under seed 0: the next wrong ones stand in
    trajs = _trajs(3, [0, 1, 2], right=lambda q, s: q == 0 and s < 2, errors=lambda q, s: q == 1 and s == 0)
    shown = _shown(wrong_pairs_block(TASK, trajs, 4))
    assert shown == [(0, 2), (1, 1), (2, 0), (1, 2)]
    assert wrong_pairs_block(TASK, _trajs(2, [0], right=lambda q, s: True), 8) is None


def test_maml_context_covers_the_minibatch():
    ctx = MetaContext(task=TASK, engine=FakeEngine(lambda r: ""), max_tokens=64, temperature=0.0, max_pairs=4)
    text = last_gradient_context(ctx, _trajs(3, [0, 1, 2, 3, 4, 5]))
    grads = [(int(q), int(s)) for q, s in re.findall(r"grad QID-(\d+) seed (\d+)", text)]
    assert grads == [(0, 0), (1, 0), (2, 0), (0, 1)]
    assert "Response 4 started" in text and "Response 5" not in text
