"""The outer loops on the real vLLM engine + bundled model, each writing a full run dir (at the default
protocol: the meta step as the paper writes it, meta_step "backward").

Two runs cover the four methods' code on the real engine: ``joint`` proposes a learned-loss candidate
(theta_meta, as ``learned_loss``) and a Reptile-style template candidate (theta_R, as ``reptile``) in
the same batched meta calls and validates them in one inner loop; ``maml`` is the template update from
the inner loop's last gradients (no meta evaluation). ``learned_loss`` alone also runs on the real
engine in tests/test_lifecycle_vllm.py (an ``mtg train`` stopped, killed and resumed); the revert rule
over several outer steps, and each method's exact calls, are tests/test_meta_outer_loops.py's and
tests/test_meta_revert.py's (scripted engine: there, which step is accepted is decided by the test).
One outer step each, one question per split, 16-32 new tokens: the real engine adds real texts and
finish reasons, not more steps (on a CPU in float32 every new token of a call costs a decode step).
"""

from __future__ import annotations

import json

import pytest

from meta_fakes import meta_config
from mtg_local.meta import run_train

RUN_FILES = ("config.json", "events.jsonl", "checkpoint.json", "cache.sqlite", "results.json", "trajectories.jsonl")
OUTER_STEPS = 1


@pytest.mark.vllm
@pytest.mark.parametrize("method", ["maml", "joint"])
def test_outer_step_on_bundled_model(vllm_engine, tmp_path, method):  # noqa: ANN001
    out = tmp_path / method
    cfg = meta_config(out=str(out), method=method, engine="vllm:bundled", seeds=(0,), outer_steps=OUTER_STEPS,
                      minibatch=1, steps=1, limit=1, max_tokens=16, optimizer_max_tokens=16, meta_max_tokens=32,
                      progress=False)
    res = run_train(cfg, engine=vllm_engine)

    for name in RUN_FILES:
        assert (out / name).exists(), name
    learns = {"maml": ["template"], "joint": ["loss_prompt", "template"]}[method]
    for target in learns:
        text = (out / f"learned_{target}.txt").read_text()
        assert text == res["learned"][target] + "\n" and text.strip()
    assert res["status"] == "complete" and res["method"] == method
    assert res["test_accuracy"]["n"] == 1 and 0.0 <= res["test_accuracy"]["mean"] <= 1.0
    assert res["n_questions"] == 1 and len((out / "trajectories.jsonl").read_text().splitlines()) == 1
    steps = [h["step"] for h in res["history"]]
    assert steps[0] == 0 and set(range(1, OUTER_STEPS + 1)) <= set(steps)
    for h in res["history"]:
        assert h["val_accuracy"] is None or 0.0 <= h["val_accuracy"] <= 1.0
    # The revert rule on every step: a candidate is kept iff it beats the best so far (for joint,
    # only the step's best candidate can be kept); skipped steps keep nothing.
    best = res["history"][0]["val_accuracy"]
    for step in sorted({h["step"] for h in res["history"]} - {0}):
        hs = [h for h in res["history"] if h["step"] == step]
        vals = [h["val_accuracy"] for h in hs if h["val_accuracy"] is not None]
        assert all(h["best_val_before"] == best for h in hs)
        if not vals:
            assert [h["accepted"] for h in hs] == [False]
            continue
        winner = max(range(len(hs)), key=lambda i: (hs[i]["val_accuracy"], -i))
        for i, h in enumerate(hs):
            assert h["accepted"] == (i == winner and h["val_accuracy"] > h["best_val_before"]), (step, h["label"])
        if hs[winner]["accepted"]:
            best = hs[winner]["val_accuracy"]
    assert res["best_val_accuracy"] == best
    ckpt = json.loads((out / "checkpoint.json").read_text())
    assert ckpt["completed_step"] == OUTER_STEPS and ckpt["test"]["accuracy"] == res["test_accuracy"]
    # at most: 2 + 2 per step inner loops (validation at step 0, test; per step the minibatch and the
    # candidates' validation, one inner loop for all of joint's) of 1 + 3T calls, plus <= 3 meta calls
    # per step (protocol meta_step "backward": evaluation, backward, TGD step; joint's two updates share them)
    assert 0 < res["engine_usage"]["calls"] <= (2 + 2 * OUTER_STEPS) * 4 + 3 * OUTER_STEPS
    # Wherever a meta evaluation was made, the backward call through it was made too (on the real engine).
    records = []
    for h in res["history"][1:]:
        info = h["info"]  # a candidate's own record, or per target when the step made none
        records += [info] if "meta_feedback" in info or "tgd_output" in info else list(info.values())
    evaluated = [r for r in records if "meta_feedback" in r]
    assert (method != "maml") == bool(evaluated)  # the 135M model gets some minibatch answer wrong
    for r in evaluated:
        assert "meta_gradient" in r or r["skipped"].startswith("meta backward failed"), r
        assert r["finish_reasons"]["meta_evaluation"] in ("stop", "length", "context_length")
    events = [json.loads(x)["event"] for x in (out / "events.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "done" and "initial_validation" in events
