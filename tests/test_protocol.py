"""The protocol: validation, hash, CLI overrides, the up-front context check, and that
solution_opt (mtg eval) and a meta run's test phase send identical requests under it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engines.base import GenRequest
from engines.errors import UserError
from engines.fake_engine import FakeEngine
from mtg_local import metrics
from mtg_local.bench.wrappers import RecordingEngine
from mtg_local.cli import build_parser
from mtg_local.commands import train as train_cmd
from mtg_local.commands.eval import EvalConfig, run_eval
from mtg_local.cli import main
from mtg_local.meta import run_train
from mtg_local.prompts import textgrad_prompts as P
from mtg_local.protocol import DEFAULT_PROTOCOL, Protocol, check_context, protocol_diff, protocol_hash


def responder(req: GenRequest) -> str:
    """Forward answers depend on the seed (some wrong, some without an answer); updates sort."""
    system = req.messages[0].content if req.messages[0].role == "system" else None
    words = re.search(r"List: ([a-z ]+)", req.messages[-1].content).group(1).split()
    if system == P.OPTIMIZER_SYSTEM_PROMPT:
        start = "" if req.response_prefix else P.IMPROVED_VARIABLE_START  # the tag unless prefilled
        return f"{start}Sorted again.\nAnswer: {' '.join(sorted(words))}{P.IMPROVED_VARIABLE_END}"
    if system is None:  # forward
        seed = req.sampling.seed or 0
        if seed % 3 == 0:
            return "we compare first letters.\nAnswer: " + " ".join(sorted(words))
        if seed % 3 == 1:
            return "we compare first letters.\nAnswer: " + " ".join(sorted(words, reverse=True))
        return "I am not sure."
    return "Check the order of the words."


# -- the object ------------------------------------------------------------------
def test_defaults_are_the_documented_ones() -> None:
    p = DEFAULT_PROTOCOL
    assert (p.steps, p.answer_selection, p.vote_tie, p.vote_counts_none) == (3, "majority_vote", "first", True)
    assert p.seeds == (0, 1, 2, 3, 4, 5) and (p.max_tokens, p.optimizer_max_tokens, p.meta_max_tokens) == (2000,) * 3
    assert (p.optimizer_temperature, p.meta_temperature, p.top_p) == (0.0, 0.0, 0.99)
    inner = p.inner_config(system_prompt="sys")
    assert inner.steps == 3 and inner.majority_vote and inner.vote_tie == "first" and inner.system_prompt == "sys"
    assert inner.top_p == 0.99 and not inner.keep_answer_format
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    for name, value in p.to_dict().items():  # every setting is in the documented table
        assert f"`{name}`" in doc, name


@pytest.mark.parametrize("field, value, message", [
    ("steps", -1, "steps must be an integer >= 0"),
    ("answer_selection", "mean", "answer_selection must be one of"),
    ("top_p", 0.0, "top_p must be"),
    ("seeds", (1, 1), "distinct"),
    ("scoring", "strict", "scoring must be one of"),
    ("max_tokens", 0, "max_tokens must be"),
    ("freeze_when", "sometimes", "freeze_when"),
])
def test_validation_names_the_field(field: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DEFAULT_PROTOCOL.replace(**{field: value})


def test_hash_equal_settings_equal_hash() -> None:
    a = Protocol(seeds=[0, 1], steps=2)
    b = Protocol.from_dict(json.loads(json.dumps(a.to_dict())))
    assert protocol_hash(a) == protocol_hash(b) == protocol_hash(a.to_dict())
    assert len(protocol_hash(a)) == 12 and int(protocol_hash(a), 16) >= 0
    c = a.replace(answer_selection="last")
    assert protocol_hash(c) != protocol_hash(a)
    assert protocol_diff(a.to_dict(), c.to_dict()) == {"answer_selection": ("majority_vote", "last")}
    with pytest.raises(ValueError, match="unknown protocol settings"):
        Protocol.from_dict({"stepz": 3})


def test_majority_vote_follows_textgrad_multimode() -> None:
    # statistics.multimode(["B", None, "C", None, "B"]) == ["B", None]: first mode in order of first appearance.
    assert metrics.majority_vote(["B", None, "C", None, "B"], tie="first", none_votes=True) == 0
    assert metrics.majority_vote([None, "B", None, "B"], tie="first", none_votes=True) == 0  # None wins: no answer
    assert metrics.majority_vote([None, "B", None, "B"], tie="last") == 3  # the old rule, kept as an option
    assert metrics.majority_vote(["A", "B"], tie="first") == 0 and metrics.majority_vote(["A", "B"], tie="last") == 1


def test_meta_step_setting_is_recorded_and_an_omitted_one_means_direct() -> None:
    assert DEFAULT_PROTOCOL.meta_step == "backward" and DEFAULT_PROTOCOL.to_dict()["meta_step"] == "backward"
    direct = DEFAULT_PROTOCOL.replace(meta_step="direct")
    assert "meta_step" not in direct.to_dict()  # as runs recorded before the setting existed
    assert protocol_hash(direct) != protocol_hash(DEFAULT_PROTOCOL)
    # Round trips, and a recorded protocol without the key is what those runs used: direct.
    assert Protocol.from_dict(direct.to_dict()) == direct
    assert Protocol.from_dict(DEFAULT_PROTOCOL.to_dict()) == DEFAULT_PROTOCOL
    old = {k: v for k, v in DEFAULT_PROTOCOL.to_dict().items() if k != "meta_step"}
    assert Protocol.from_dict(old).meta_step == "direct" and protocol_hash(old) == protocol_hash(direct)
    with pytest.raises(ValueError, match="meta_step must be one of backward, direct, got 'fused'"):
        DEFAULT_PROTOCOL.replace(meta_step="fused")
    args = build_parser().parse_args(["eval", "--out", "x", "--meta-step", "direct"])
    from mtg_local.protocol_flags import protocol_from_args

    assert protocol_from_args(args) == direct


# -- the CLI ---------------------------------------------------------------------
def test_every_command_has_the_same_protocol_flags_and_defaults(tmp_path: Path) -> None:
    parser = build_parser()
    common = ["--out", str(tmp_path / "x")]
    ev = parser.parse_args(["eval", *common])
    tr = parser.parse_args(["train", *common])
    bl = parser.parse_args(["baseline", "--method", "prompt_opt", *common])
    from mtg_local.protocol_flags import protocol_from_args

    assert protocol_from_args(ev) == protocol_from_args(tr) == protocol_from_args(bl) == DEFAULT_PROTOCOL
    flags = ["--seeds", "0,1", "--steps", "1", "--task-seed", "7", "--answer-selection", "last", "--no-keep-format",
             "--temperature", "0", "--max-tokens", "100", "--limit", "2"]
    got = [protocol_from_args(parser.parse_args([c, *extra, *common, *flags]))
           for c, extra in (("eval", []), ("train", []), ("baseline", ["--method", "copro"]))]
    assert got[0] == got[1] == got[2]
    assert got[0] == DEFAULT_PROTOCOL.replace(seeds=(0, 1), steps=1, task_seed=7, answer_selection="last",
                                              keep_answer_format=False, temperature=0.0, max_tokens=100, limit=2)
    tr = parser.parse_args(["train", *common, "--majority-vote", "--keep-format", "--outer-steps", "0"])
    p = protocol_from_args(tr)
    assert p.answer_selection == "majority_vote" and p.keep_answer_format and p.outer_steps == 0


def test_protocol_file_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "results.json"
    f.write_text(json.dumps({"protocol": DEFAULT_PROTOCOL.replace(steps=5, seeds=(0,)).to_dict()}))
    from mtg_local.protocol_flags import protocol_from_args

    args = build_parser().parse_args(["eval", "--out", str(tmp_path / "r"), "--protocol", str(f), "--top-p", "1"])
    assert protocol_from_args(args) == DEFAULT_PROTOCOL.replace(steps=5, seeds=(0,), top_p=1.0)


class _Ctx(FakeEngine):
    max_model_len = 1024


def test_context_check_names_both_numbers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--max-tokens 2000 .*max_model_len 1024"):
        check_context(DEFAULT_PROTOCOL, {"forward": _Ctx()})
    check_context(DEFAULT_PROTOCOL.replace(max_tokens=512, optimizer_max_tokens=512), {"forward": _Ctx(),
                                                                                       "optimizer": _Ctx()})
    check_context(DEFAULT_PROTOCOL, {"forward": FakeEngine()})  # no max_model_len: not checked
    args = build_parser().parse_args(["eval", "--out", str(tmp_path / "r"), "--seeds", "0", "--limit", "1",
                                      "--max-tokens", "512", "--no-progress"])
    with pytest.raises(UserError, match=r"--optimizer-max-tokens 2000 .*max_model_len 1024"):
        run_eval(args, engine=_Ctx(responder))
    assert not (tmp_path / "r" / "results.json").exists()


# -- must show: solution_opt and a meta run's test phase send identical requests -------
def test_solution_opt_and_meta_test_phase_send_identical_requests(tmp_path: Path) -> None:
    parser = build_parser()
    common = ["--task", "synthetic_word_sorting", "--limit", "2", "--no-progress", "--no-cache"]
    eval_args = parser.parse_args(["eval", "--method", "solution_opt", "--out", str(tmp_path / "eval"), *common])
    eval_cfg = EvalConfig.from_args(eval_args)
    default = DEFAULT_PROTOCOL.replace(limit=2)  # the default protocol on the first 2 questions
    assert eval_cfg.protocol == default
    eval_rec = RecordingEngine(FakeEngine(responder))
    ev = run_eval(eval_cfg, engine=eval_rec)

    train_args = parser.parse_args(["train", "--method", "learned_loss", "--outer-steps", "0",
                                    "--out", str(tmp_path / "train"), *common])
    train_cfg, _ = train_cmd.config_from_args(train_args)
    assert train_cfg.protocol == default.replace(outer_steps=0)
    train_rec = RecordingEngine(FakeEngine(responder))
    tr = run_train(train_cfg, engine=train_rec)

    calls = 1 + 3 * DEFAULT_PROTOCOL.steps
    assert len(eval_rec.batches) == calls and len(train_rec.batches) == 2 * calls  # validation, then test
    test_phase = train_rec.batches[calls:]
    # 2 questions x 6 seeds; later (greedy) phases reach the backend once per distinct request.
    assert len(eval_rec.batches[0]) == len(test_phase[0]) == 2 * 6
    for k, (a, b) in enumerate(zip(eval_rec.batches, test_phase)):
        assert len(a) == len(b) > 0, k
        for i, (ra, rb) in enumerate(zip(a, b)):
            assert ra.key_dict() == rb.key_dict(), (k, i)
    assert eval_rec.batches[0][0].sampling.top_p == 0.99 and eval_rec.batches[0][0].sampling.max_tokens == 2000
    # Same answers, same majority vote, same accuracy; different protocols only by outer_steps.
    assert ev["test_accuracy"] == tr["test_accuracy"]
    assert protocol_diff(ev["protocol"], tr["protocol"]) == {"outer_steps": (12, 0)}
    assert ev["protocol_hash"] == protocol_hash(default)
    assert tr["protocol_hash"] == protocol_hash(default.replace(outer_steps=0))


def test_train_resume_round_trips_the_protocol(tmp_path: Path) -> None:
    parser = build_parser()
    out = tmp_path / "run"
    args = parser.parse_args(["train", "--out", str(out), "--steps", "1", "--seeds", "0,1", "--limit", "2",
                              "--outer-steps", "0", "--answer-selection", "last", "--no-progress"])
    config, resume = train_cmd.config_from_args(args)
    assert not resume
    run_train(config, engine=FakeEngine(responder))
    stored = json.loads((out / "config.json").read_text())
    assert stored["train"]["protocol"] == config.protocol.to_dict()
    assert stored["protocol_hash"] == protocol_hash(config.protocol)
    # --resume reads everything, the protocol included, from config.json
    (out / "checkpoint.json").write_text((out / "checkpoint.json").read_text())
    again, resume = train_cmd.config_from_args(parser.parse_args(["train", "--resume", str(out), "--no-progress"]))
    assert resume and again.protocol == config.protocol and again.steps == 1 and again.seeds == (0, 1)


def test_resume_of_a_run_without_protocol_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "old"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"command": "train", "train": {"out": str(out), "steps": 1}}))
    (out / "checkpoint.json").write_text(json.dumps({"completed_step": 0}))
    with pytest.raises(UserError, match="records no protocol"):
        train_cmd.config_from_args(build_parser().parse_args(["train", "--resume", str(out)]))


def test_a_one_step_tie_keeps_the_zero_shot_answer_like_textgrad(tmp_path: Path) -> None:
    """T=1, seed 1: a wrong zero-shot answer, a right update. TextGrad's multimode()[0] keeps the first."""
    from mtg_local.evaluation import evaluate
    from mtg_local.tasks import get_task

    task = get_task("synthetic_word_sorting")
    examples = task.splits().test[:2]
    p = DEFAULT_PROTOCOL.replace(steps=1, seeds=(0, 1))
    outcomes = {name: evaluate(task, examples, method="solution_opt", seeds=proto.seeds,
                               forward_engine=FakeEngine(responder), config=proto.inner_config())
                for name, proto in (("textgrad", p), ("last", p.replace(answer_selection="last")),
                                    ("latest_tie", p.replace(vote_tie="last")))}
    assert outcomes["textgrad"].per_seed == {0: 1.0, 1: 0.0}  # tie 1-1: the zero-shot (wrong) answer
    assert outcomes["last"].per_seed == outcomes["latest_tie"].per_seed == {0: 1.0, 1: 1.0}


# -- presets and the protocols recorded before issue 19 ----------------------------------------
#: The default protocol as recorded before issue 19 (hash of the commit before it, 3b4ebda).
OLD_DEFAULT = {k: v for k, v in DEFAULT_PROTOCOL.to_dict().items()
               if k not in ("prompts", "update_parsing", "meta_step")} | {"prefill_update_tag": True}


def test_textgrad_preset_and_named_protocols_on_the_command_line(tmp_path: Path) -> None:
    from mtg_local.protocol_flags import protocol_from_args
    from mtg_local.protocol import PRESETS, preset

    parser = build_parser()
    common = ["--out", str(tmp_path / "x")]
    tg = protocol_from_args(parser.parse_args(["eval", *common, "--protocol", "textgrad"]))
    assert tg == preset("textgrad") == PRESETS["textgrad"]
    assert (tg.forward_system_prompt, tg.inference_template, tg.temperature, tg.seeds) == ("simple-evals", False, 0.0, (0,))
    assert (tg.prefill_update_tag, tg.update_parsing, tg.top_p, tg.max_tokens, tg.steps) == (False, "textgrad", 0.99, 2000, 3)
    inner = tg.inner_config()
    assert inner.system_prompt == P.SIMPLE_EVALS_SYSTEM_PROMPT and not inner.inference_template
    assert tg.inner_config(system_prompt="learned").system_prompt == "learned"  # a method's own wins
    assert DEFAULT_PROTOCOL.inner_config().system_prompt is None and DEFAULT_PROTOCOL.inner_config().inference_template
    # flags apply on top of a preset; a name that is neither a preset nor a file is one clear error
    args = parser.parse_args(["train", *common, "--protocol", "textgrad", "--seeds", "0-2", "--prefill-tag"])
    assert protocol_from_args(args) == tg.replace(seeds=(0, 1, 2), prefill_update_tag=True)
    args = parser.parse_args(["eval", *common, "--protocol", "textgrad", "--loss-prompt-source", "paper",
                              "--meta-prefill-tag", "false"])  # fmt: skip
    assert protocol_from_args(args) == tg.replace(loss_prompt_source="paper", meta_prefill_update_tag=False)
    assert tg.loss_prompt_source == "textgrad" and DEFAULT_PROTOCOL.loss_prompt_source == "paper"
    with pytest.raises(UserError, match="neither a protocol name .*default, textgrad.* nor an existing file"):
        protocol_from_args(parser.parse_args(["eval", *common, "--protocol", "textgard"]))
    with pytest.raises(ValueError, match="unknown protocol preset 'x'"):
        preset("x")
    assert protocol_hash(tg) != protocol_hash(DEFAULT_PROTOCOL)


def test_eval_with_the_textgrad_preset_sends_its_forward_call(tmp_path: Path) -> None:
    rec = RecordingEngine(FakeEngine(responder))
    args = build_parser().parse_args(["eval", "--protocol", "textgrad", "--limit", "2", "--steps", "1",
                                      "--no-progress", "--out", str(tmp_path / "r")])
    res = run_eval(args, engine=rec)
    fwd = rec.batches[0]
    assert len(fwd) == 2 and all(r.messages[0].content == P.SIMPLE_EVALS_SYSTEM_PROMPT for r in fwd)
    assert all(r.response_prefix == "" and r.sampling.temperature == 0.0 for r in fwd)
    assert res["protocol_hash"] == protocol_hash(DEFAULT_PROTOCOL.replace(
        forward_system_prompt="simple-evals", inference_template=False, temperature=0.0, seeds=(0,), steps=1,
        limit=2, loss_prompt_source="textgrad"))  # fmt: skip
    # the preset as recorded before it took TextGrad's loss prompts reads as that protocol, with its hash
    from mtg_local.protocol import PRESETS

    earlier = {k: v for k, v in PRESETS["textgrad"].to_dict().items() if k != "loss_prompt_source"}
    assert Protocol.from_dict(earlier).loss_prompt_source == "paper"
    assert protocol_hash(earlier) == "dcb1b755d0cd" != protocol_hash(PRESETS["textgrad"])
    trajs = [json.loads(x) for x in (tmp_path / "r" / "trajectories.jsonl").read_text().splitlines()]
    assert all(t["template"] == "" and not t["answers"][0].startswith("Let's") for t in trajs)


def test_protocols_recorded_before_issue_19_are_another_protocol() -> None:
    from mtg_local.protocol import LEGACY_PROMPTS

    old = Protocol.from_dict(OLD_DEFAULT)
    assert old.prompts == LEGACY_PROMPTS and old.update_parsing == "tolerant" and old.prefill_update_tag
    assert protocol_hash(OLD_DEFAULT) == protocol_hash(old) == "29e6eb4adcc3"  # the hash those runs recorded
    assert protocol_hash(DEFAULT_PROTOCOL) != "29e6eb4adcc3"
    assert protocol_diff(DEFAULT_PROTOCOL.to_dict(), OLD_DEFAULT) == {
        "prefill_update_tag": (False, True), "prompts": ("textgrad-0.1.8", None), "update_parsing": ("textgrad", None),
        "meta_step": ("backward", None)}
    with pytest.raises(UserError, match="prompts='mtg-reworded'.*cannot be run"):
        old.inner_config()
    # a hand-written, partial protocol is not an old record: its missing settings are today's defaults
    assert Protocol.from_dict({"steps": 5}) == DEFAULT_PROTOCOL.replace(steps=5)


def test_protocol_file_from_an_old_run_or_written_by_hand(tmp_path: Path) -> None:
    from mtg_local.protocol_flags import read_protocol_file

    (tmp_path / "results.json").write_text(json.dumps({"protocol": OLD_DEFAULT}))
    (tmp_path / "protocol.json").write_text(json.dumps(OLD_DEFAULT))  # a complete object written by hand
    assert read_protocol_file(str(tmp_path / "results.json")).prompts == "mtg-reworded"  # that run's protocol
    by_hand = read_protocol_file(str(tmp_path / "protocol.json"))
    assert by_hand == DEFAULT_PROTOCOL.replace(prefill_update_tag=True)  # today's for what it leaves out
    by_hand.inner_config()  # runnable


def test_report_lists_runs_of_the_old_protocol_apart(tmp_path: Path) -> None:
    from mtg_local.report.collect import collect

    root = tmp_path / "runs"
    for name in ("a", "b"):
        assert main(["eval", "--engine", "fake", "--limit", "2", "--seeds", "0", "--steps", "1", "--no-progress",
                     "--out", str(root / name)]) == 0
    old_dir = root / "old"
    assert main(["eval", "--engine", "fake", "--limit", "2", "--seeds", "0", "--steps", "1", "--no-progress",
                 "--out", str(old_dir)]) == 0
    res = json.loads((old_dir / "results.json").read_text())
    old = {k: v for k, v in res["protocol"].items() if k not in ("prompts", "update_parsing")}
    old["prefill_update_tag"] = True
    res["protocol"], res["protocol_hash"] = old, protocol_hash(Protocol.from_dict(old))
    res.pop("settings_hash")  # a run recorded before settings_hash existed
    (old_dir / "results.json").write_text(json.dumps(res))
    col = collect([root])
    (p,) = [p for p in col.problems if p.kind == "other_protocol"]
    assert p.path.name == "old"
    assert "prompts: 'textgrad-0.1.8' -> None" in p.detail and "prefill_update_tag: False -> True" in p.detail


def test_resuming_a_run_of_the_old_protocol_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "old"
    args = build_parser().parse_args(["train", "--out", str(out), "--steps", "1", "--seeds", "0", "--limit", "2",
                                      "--outer-steps", "1", "--no-progress"])
    config, _ = train_cmd.config_from_args(args)
    stored = {"command": "train", "train": {**config.to_dict(), "protocol": OLD_DEFAULT}}
    out.mkdir()
    (out / "config.json").write_text(json.dumps(stored))
    resumed, resume = train_cmd.config_from_args(build_parser().parse_args(["train", "--resume", str(out)]))
    assert resume and resumed.protocol.prompts == "mtg-reworded"
    with pytest.raises(UserError, match="cannot be run any more"):
        run_train(resumed, engine=FakeEngine(responder))
    assert not (out / "checkpoint.json").exists()
