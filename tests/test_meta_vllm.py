"""Every outer loop runs 2 steps on the real vLLM engine + bundled model and writes a full run dir
(at the default protocol: the meta step as the paper writes it, meta_step "backward")."""

from __future__ import annotations

import json

import pytest

from meta_fakes import meta_config
from mtg_local.meta import METHODS, run_train

RUN_FILES = ("config.json", "events.jsonl", "checkpoint.json", "cache.sqlite", "results.json", "trajectories.jsonl")


@pytest.mark.vllm
@pytest.mark.parametrize("method", METHODS)
def test_two_outer_steps_on_bundled_model(vllm_engine, tmp_path, method):  # noqa: ANN001
    out = tmp_path / method
    cfg = meta_config(out=str(out), method=method, engine="vllm:bundled", seeds=(0,), outer_steps=2, minibatch=1,
                     steps=1, limit=2, max_tokens=32, optimizer_max_tokens=32, meta_max_tokens=48, progress=False)
    res = run_train(cfg, engine=vllm_engine)

    for name in RUN_FILES:
        assert (out / name).exists(), name
    learns = {"learned_loss": ["loss_prompt"], "maml": ["template"], "reptile": ["template"],
              "joint": ["loss_prompt", "template"]}[method]
    for target in learns:
        text = (out / f"learned_{target}.txt").read_text()
        assert text == res["learned"][target] + "\n" and text.strip()
    assert res["status"] == "complete" and res["method"] == method
    assert res["test_accuracy"]["n"] == 1 and 0.0 <= res["test_accuracy"]["mean"] <= 1.0
    assert res["n_questions"] == 2 and len((out / "trajectories.jsonl").read_text().splitlines()) == 2
    steps = [h["step"] for h in res["history"]]
    assert steps[0] == 0 and {1, 2} <= set(steps)
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
    assert ckpt["completed_step"] == 2 and ckpt["test"]["accuracy"] == res["test_accuracy"]
    # at most: 5 inner loops (step 0 + minibatch 1, minibatch 2, 2 validations, test) of 1 + 3T calls,
    # plus <= 3 meta calls per step (protocol meta_step "backward": evaluation, backward, TGD step)
    assert 0 < res["engine_usage"]["calls"] <= 5 * 4 + 3 * 2
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
