"""Issue 14 defects 1, 3 and the baseline lock, through the real CLI in subprocesses.

* Secrets: every command that takes an engine runs with a canary key (``--engine-opt
  api_key=...`` and ``OPENAI_API_KEY``) against the local fault server; no byte of any
  file it writes (SQLite and WAL included), nor stdout/stderr, holds a canary.
* Run status: a run whose requests all failed (a server that fails every completion) is ``failed``,
  exits 3 and says on one stderr line how many failed and why; a run with more than
  1 % failed requests is ``degraded``; ``mtg report`` lists both as problems.
* Failed results are not cached: a rerun sends exactly the failed requests again.
* ``mtg baseline`` takes the run-dir lock.
* Report equals results: the CSV's mean and std are results.json's.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from mtg_local.runs.health import DEGRADED_SHARE, EXIT_DEGRADED, assess
from mtg_local.runs.lock import RunDirLock
from mtg_local.runs.secrets import is_secret_key, public_engine_opts, redact
from tests.conftest import require
from tests.fault_server import ECHO_AUTH_400_MARKER, FaultServer

REPO = Path(__file__).resolve().parents[1]
FAST = ["timeout_s=5", "max_retries=0", "backoff_initial_s=0.01", "backoff_max_s=0.05", "max_concurrency=8"]


def mtg(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs ``python -m mtg_local.cli ARGS`` with this checkout first on the path."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "mtg_local.cli", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def engine_args(base_url: str, *opts: str) -> list[str]:
    out = ["--engine", "openai:fault-model", "--engine-opt", f"base_url={base_url}"]
    for o in (*FAST, *opts):
        out += ["--engine-opt", o]
    return out


def word_answer(body: dict) -> str:
    """A scripted word sorter: right for some (question, seed) pairs, wrong for others."""
    users = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
    m = re.search(r"List: ([a-z ]+)", users[-1] if users else "")
    if not m:
        return "The answer looks fine."
    words = m.group(1).split()
    good = (sum(map(len, words)) + int(body.get("seed") or 0)) % 3 != 0
    return "Answer: " + " ".join(sorted(words) if good else words[::-1])


def completions(srv: FaultServer) -> list:
    """The server's completion calls (not the /v1/models probes)."""
    return [c for c in srv.calls if c.path.endswith("completions")]


class DeadModelServer(FaultServer):
    """Lists the model (the probe before the first phase passes) but fails every completion with 500."""

    def _fault_for(self, body):  # noqa: ANN001, ANN202
        return "500", super()._fault_for(body)[1]


class KeyRecordingServer(FaultServer):
    """The fault server, also keeping the Authorization headers it received."""

    def __init__(self, **kw) -> None:  # noqa: ANN003
        super().__init__(**kw)
        self.auth: list[str] = []

    async def _complete(self, request):  # noqa: ANN001, ANN202
        self.auth.append(request.headers.get("Authorization", ""))
        return await super()._complete(request)


# ------------------------------------------------------------------------------------------ secrets
def test_secret_filter_units():
    assert is_secret_key("api_key") and is_secret_key("HF_TOKEN") and is_secret_key("Authorization")
    assert is_secret_key("apiKey") and is_secret_key("client_secret") and is_secret_key("db-password")
    assert not is_secret_key("max_tokens") and not is_secret_key("prompt_tokens") and not is_secret_key("keep_answer_format")
    assert public_engine_opts(["api_key=sk-1", "dtype=bfloat16", " token = x"]) == ["dtype=bfloat16"]
    obj = {"engine_opts": ["api_key=sk-zzzzzzzz", "max_model_len=8"], "nested": [{"hf_token": "hf_abcdefgh"}],
           "error": "401 Authorization: Bearer abc.def", "usage": {"max_tokens": 5, "prompt_tokens": 3},
           "api_key_env": None}
    out = redact(obj)
    text = json.dumps(out)
    assert "sk-zzzzzzzz" not in text and "hf_abcdefgh" not in text and "abc.def" not in text
    assert out["engine_opts"] == ["api_key=[redacted]", "max_model_len=8"]
    assert out["usage"] == {"max_tokens": 5, "prompt_tokens": 3} and out["api_key_env"] is None
    # The name of the variable that holds a secret is not one: it stays in written configs.
    assert not is_secret_key("api_key_env") and not is_secret_key("HF_TOKEN_ENV")
    assert public_engine_opts(["api_key_env=MY_KEY", "api_key=sk-1"]) == ["api_key_env=MY_KEY"]


def test_grid_refuses_secret_engine_options(tmp_path):
    from mtg_local.slurm import GridError, parse_grid

    base = {"name": "g", "tasks": ["synthetic_word_sorting"], "methods": ["zero_shot_cot"]}
    for raw in ({**base, "engines": ["openai:gpt-4o-mini"], "engine_opts": ["api_key=sk-grid-canary-1"]},
                {**base, "engines": [{"spec": "openai:m", "opts": ["hf_token=hf-canary-22"]}]}):
        with pytest.raises(GridError, match="looks like a secret") as err:
            parse_grid(raw, runs_root=str(tmp_path))
        assert "canary" not in str(err.value)  # the error names the key, never the value
    ok = parse_grid({**base, "engines": ["openai:gpt-4o-mini"], "engine_opts": ["api_key_env=MY_KEY_VAR"]},
                    runs_root=str(tmp_path))
    assert all("--engine-opt" in r.argv and "api_key_env=MY_KEY_VAR" in r.argv for r in ok.expand())


def test_secret_env_values_are_redacted_anywhere(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-0123456789-canary")
    out = redact({"note": "called with tok-0123456789-canary in the url", "n": 1})
    assert "tok-0123456789-canary" not in json.dumps(out) and out["n"] == 1


def test_the_working_directory_is_not_a_secret(monkeypatch, tmp_path):
    """PWD's name looks secret ("pwd"), its value is the cwd: paths under it stay readable (data
    files, run dirs), else a resumed run would read "[redacted]/data.jsonl"."""
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.setenv("OLDPWD", str(tmp_path))
    assert redact({"data_file": f"{tmp_path}/data.jsonl"}) == {"data_file": f"{tmp_path}/data.jsonl"}


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_secrets_through_the_cli(tmp_path):
    """Every command that takes an engine, with canary keys, writes no canary anywhere."""
    opt_key = f"sk-optcanary-{uuid.uuid4().hex}"
    env_key = f"sk-envcanary-{uuid.uuid4().hex}"
    env = {"OPENAI_API_KEY": env_key}
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "user": "hello"}) + "\n"
                       + json.dumps({"id": "b", "user": f"echo {ECHO_AUTH_400_MARKER}"}) + "\n")
    runs = tmp_path / "runs"
    with KeyRecordingServer(fault_rate=0.0, answer=word_answer) as srv:
        eng = engine_args(srv.base_url, f"api_key={opt_key}")
        commands = {
            "eval": ["eval", "--task", "synthetic_word_sorting", "--limit", "2", "--seeds", "0", "--steps", "1",
                     "--max-tokens", "32", "--optimizer-max-tokens", "32", "--out", str(runs / "eval"), "--no-progress", *eng],
            "train": ["train", "--task", "synthetic_word_sorting", "--limit", "2", "--seeds", "0", "--outer-steps", "1",
                      "--minibatch", "1", "--steps", "1", "--max-tokens", "32", "--optimizer-max-tokens", "32",
                      "--meta-max-tokens", "32", "--out", str(runs / "train"), "--no-progress", *eng],
            "baseline": ["baseline", "--method", "prompt_opt", "--task", "synthetic_word_sorting", "--limit", "2", "--seeds", "0",
                         "--epochs", "1", "--max-steps", "1", "--batch-size", "1", "--max-tokens", "32",
                         "--optimizer-max-tokens", "32", "--out", str(runs / "baseline"), *eng],
            "generate": ["generate", str(prompts), "--out", str(runs / "generated.jsonl"), "--max-tokens", "16",
                         "--cache", str(runs / "gen-cache" / "cache.sqlite"), *eng],
            "bench": ["bench", "engine", "--requests", "2", "--max-tokens", "8", *eng],
        }
        (runs / "gen-cache").mkdir(parents=True)
        outputs = {}
        for name, argv in commands.items():
            p = mtg(argv, env=env)
            outputs[name] = p
            assert p.returncode == 0, f"{name}: rc {p.returncode}\n{p.stderr[-3000:]}"
    # Something real was written and the key did reach the server (so the greps below can fail).
    assert srv.auth and all(a == f"Bearer {opt_key}" for a in srv.auth)
    for name in ("eval", "train", "baseline"):
        results = json.loads((runs / name / "results.json").read_text())
        assert results["status"] == "complete" and results["engine_usage"]["requests"] > 0, name
        assert (runs / name / "cache.sqlite").stat().st_size > 0 and (runs / name / "events.jsonl").exists()
        config = json.loads((runs / name / "config.json").read_text())
        opts = (config.get("train") or config)["engine_opts"]
        assert any(o.startswith("base_url=") for o in opts) and not any(o.startswith("api_key") for o in opts), name
    generated = [json.loads(x) for x in (runs / "generated.jsonl").read_text().splitlines()]
    assert generated[0]["text"] and "Authorization" in generated[1]["error"]  # the server echoed the header
    assert json.loads(outputs["bench"].stdout)["batched_calls"] == 1
    files = _all_bytes(runs)
    assert len(files) >= 15 and any(f.endswith("cache.sqlite") for f in files)
    leaks = [f"{path}: {key[:14]}" for path, data in files.items() for key in (opt_key, env_key)
             if key.encode() in data or key[13:].encode() in data]
    leaks += [f"{name} {stream}: {key[:14]}" for name, p in outputs.items() for stream in ("stdout", "stderr")
              for key in (opt_key, env_key) if key[13:] in getattr(p, stream)]
    assert not leaks, leaks


def test_copro_baseline_writes_no_secret(tmp_path):
    require("dspy")  # fails under CI=true when missing
    key = f"sk-coprocanary-{uuid.uuid4().hex}"
    out = tmp_path / "copro"
    with FaultServer(fault_rate=0.0, answer=word_answer) as srv:
        p = mtg(["baseline", "--method", "copro", "--task", "synthetic_word_sorting", "--limit", "2", "--seeds", "0",
                 "--breadth", "2", "--depth", "1", "--num-threads", "2", "--max-tokens", "32",
                 "--optimizer-max-tokens", "32", "--out", str(out), *engine_args(srv.base_url, f"api_key={key}")],
                env={"OPENAI_API_KEY": key})
    assert (out / "results.json").exists(), p.stderr[-3000:]
    assert srv.calls
    files = _all_bytes(out)
    assert not [f for f, data in files.items() if key[14:].encode() in data]
    assert key[14:] not in p.stdout + p.stderr


# ------------------------------------------------------------------------------------ run status
def test_status_rule_units():
    assert assess({"errors": 0, "requests": 0}).status == "complete"
    assert assess({"errors": 1, "requests": 100}).status == "complete"  # exactly 1 %: within the rule
    assert assess({"errors": 2, "requests": 100}).status == "degraded"
    assert assess({"errors": 4, "requests": 4}).status == "failed"
    assert DEGRADED_SHARE == 0.01 and EXIT_DEGRADED == 3


def _check_failed_run(p: subprocess.CompletedProcess, out: Path, command: str, n: int) -> None:
    assert p.returncode == 3, p.stderr[-2000:]
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"mtg {command}: run failed: every request failed ({n} of {n})")
    assert "first error: InternalServerError" in lines[0] and "rerun" in lines[0] and "only they are generated again" in lines[0]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed"
    assert results["failed_requests"]["errors"] == results["failed_requests"]["requests"] == n


def test_eval_whose_every_request_fails_is_failed_not_zero(tmp_path):
    # (A dead port fails before the first phase, in seconds: tests/test_engine_probe.py.)
    out = tmp_path / "eval"
    with DeadModelServer(fault_rate=0.0) as srv:
        p = mtg(["eval", "--task", "synthetic_word_sorting", "--method", "zero_shot_cot", "--limit", "2", "--seeds",
                 "0,1", "--out", str(out), "--no-progress", *engine_args(srv.base_url, "api_key=sk-x")])
    _check_failed_run(p, out, "eval", 4)
    report = mtg(["report", str(out), "--out", str(tmp_path / "rep"), "--no-plots"])
    assert report.returncode == 0
    problems = list(csv.DictReader((tmp_path / "rep" / "problems.csv").open()))
    cells = list(csv.DictReader((tmp_path / "rep" / "results.csv").open()))
    assert [p["kind"] for p in problems] == ["failed"] and "4 of 4 requests failed" in problems[0]["detail"]
    assert cells == []


def test_baseline_whose_every_request_fails_is_failed_not_zero(tmp_path):
    out = tmp_path / "baseline"
    with DeadModelServer(fault_rate=0.0) as srv:
        p = mtg(["baseline", "--method", "prompt_opt", "--task", "synthetic_word_sorting", "--limit", "3", "--seeds",
                 "0", "--epochs", "1", "--max-steps", "1", "--batch-size", "3", "--out", str(out),
                 *engine_args(srv.base_url, "api_key=sk-x")])
    results = json.loads((out / "results.json").read_text())
    n = results["engine_usage"]["requests"]
    assert n >= 6
    _check_failed_run(p, out, "baseline", n)


def test_train_whose_every_request_fails_is_failed_not_zero(tmp_path):
    out = tmp_path / "train"
    with DeadModelServer(fault_rate=0.0) as srv:
        p = mtg(["train", "--task", "synthetic_word_sorting", "--limit", "2", "--seeds", "0", "--outer-steps", "1",
                 "--minibatch", "1", "--steps", "1", "--out", str(out), "--no-progress",
                 *engine_args(srv.base_url, "api_key=sk-x")])
    n = json.loads((out / "results.json").read_text())["engine_usage"]["requests"]
    _check_failed_run(p, out, "train", n)
    assert f"--cache {out / 'cache.sqlite'}" in p.stderr


def test_degraded_run_exits_3_and_rerun_retries_only_failed_requests(tmp_path):
    """Half the first attempts fail (no retries): degraded; the rerun sends exactly the failed ones."""
    out = tmp_path / "eval"
    argv = ["eval", "--task", "synthetic_word_sorting", "--method", "zero_shot_cot", "--limit", "8", "--seeds", "0,1",
            "--out", str(out), "--no-progress"]
    with FaultServer(fault_rate=0.5, kinds=("500",), seed=1, answer=word_answer) as srv:
        first = mtg(argv + engine_args(srv.base_url, "api_key=sk-x"))
        calls_first = len(completions(srv))
        r1 = json.loads((out / "results.json").read_text())
        failed = r1["engine_usage"]["errors"]
        second = mtg(argv + engine_args(srv.base_url, "api_key=sk-x"))
        retried = completions(srv)[calls_first:]
    assert calls_first == 16 and 0 < failed < 16
    assert first.returncode == 3 and r1["status"] == "degraded"
    assert f"({failed} of 16)" in first.stderr and "injected server error" in first.stderr
    # Only the failed requests reached the server again; the good ones came from the cache.
    assert len(retried) == failed and all(c.attempt == 1 for c in retried)
    r2 = json.loads((out / "results.json").read_text())
    assert r2["engine_usage"]["cache_hits"] == 16 - failed
    assert r2["engine_usage"]["errors"] == sum(c.fault != "ok" for c in retried)
    rep = mtg(["report", str(out), "--out", str(tmp_path / "rep"), "--no-plots"])
    problems = list(csv.DictReader((tmp_path / "rep" / "problems.csv").open()))
    if r2["status"] != "complete":
        assert second.returncode == 3 and [p["kind"] for p in problems] == [r2["status"]]
    else:
        assert second.returncode == 0 and problems == [], rep.stderr


def test_report_lists_an_old_complete_record_with_all_requests_failed_as_failed(tmp_path):
    """results.json written before the rule (status complete, 9/9 errors) is a problem, not a 0 % cell."""
    from mtg_local.report.collect import Problem, parse_results

    body = {"schema_version": 1, "status": "complete", "task": "word_sorting", "method": "prompt_opt",
            "engine": "openai:m", "test_accuracy": {"mean": 0.0, "std": 0.0, "per_seed": {"0": 0.0}, "n": 1},
            "engine_usage": {"calls": 3, "requests": 9, "errors": 9}}
    item = parse_results(body, tmp_path / "results.json")
    assert isinstance(item, Problem) and item.kind == "failed" and "9 of 9" in item.detail


# ---------------------------------------------------------------------------------------- lock
def test_second_baseline_into_one_run_dir_refuses(tmp_path):
    out = tmp_path / "run"
    argv = ["baseline", "--method", "prompt_opt", "--task", "synthetic_word_sorting", "--limit", "2", "--seeds", "0",
            "--epochs", "1", "--max-steps", "1", "--engine", "fake", "--out", str(out)]
    with RunDirLock(out):  # a first baseline holds the run dir
        p = mtg(argv)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.startswith("mtg baseline: error: run dir") and f"is in use by pid {os.getpid()}" in p.stderr
    assert not (out / "results.json").exists()
    assert mtg(argv).returncode == 0 and (out / "results.json").exists()  # free again: it runs


# ----------------------------------------------------------------------------- report = results
def test_report_csv_equals_results_json(tmp_path):
    out = tmp_path / "runs" / "eval"
    with FaultServer(fault_rate=0.0, answer=word_answer) as srv:
        p = mtg(["eval", "--task", "synthetic_word_sorting", "--method", "zero_shot_cot", "--limit", "6", "--seeds", "0,1,2",
                 "--out", str(out), "--no-progress", *engine_args(srv.base_url, "api_key=sk-x")])
    assert p.returncode == 0, p.stderr
    results = json.loads((out / "results.json").read_text())
    acc = results["test_accuracy"]
    assert len(set(acc["per_seed"].values())) > 1 and acc["std"] > 0  # a non-trivial mean and std
    rep = mtg(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep"), "--no-plots"])
    assert rep.returncode == 0, rep.stderr
    rows = list(csv.DictReader((tmp_path / "rep" / "results.csv").open()))
    assert len(rows) == 1
    assert rows[0]["mean_pct"] == f"{100 * acc['mean']:.2f}" and rows[0]["std_pct"] == f"{100 * acc['std']:.2f}"
    assert int(rows[0]["n_seeds"]) == 3 and int(rows[0]["requests"]) == results["engine_usage"]["requests"]


# ------------------------------------------------------------------------------------- retries
def test_http_400_is_not_retried_but_500_is():
    """Counted at the server: a 400 gets exactly one call; a 500 gets 1 + max_retries."""
    from engines import GenRequest, create_engine
    from tests.fault_server import ALWAYS_FAIL_MARKER

    with FaultServer(fault_rate=0.0) as srv:
        engine = create_engine("openai:fault-model", base_url=srv.base_url, api_key="sk-test-0000",
                               max_retries=3, backoff_initial_s=0.01, backoff_max_s=0.02, timeout_s=5)
        bad, flaky, good = engine.generate([GenRequest.chat(f"x {ECHO_AUTH_400_MARKER}", id="bad"),
                                            GenRequest.chat(f"y {ALWAYS_FAIL_MARKER}", id="flaky"),
                                            GenRequest.chat("z", id="good")])
        engine.close()
    calls = completions(srv)
    per = {k: [c for c in calls if k in json.dumps(c.body)] for k in (ECHO_AUTH_400_MARKER, ALWAYS_FAIL_MARKER)}
    assert bad.error and "400" in bad.error and flaky.error and good.ok
    assert len(per[ECHO_AUTH_400_MARKER]) == 1
    assert len(per[ALWAYS_FAIL_MARKER]) == 4 and engine.usage.retries == 3


def test_slurm_job_log_line_hides_secret_engine_options(tmp_path):
    """slurm/lib/mtg_job.sh logs the mtg command line; secret engine options show as [redacted]."""
    env = {**os.environ, "MTG_DRY_RUN": "1", "MTG_TP": "1", "MTG_ENGINE_OPTS": "api_key=sk-envopt-canary-1 max_num_batched_tokens=8"}
    script = (f'source {REPO / "slurm" / "lib" / "mtg_job.sh"}; '
              f'mtg_run eval --engine vllm:x --out {tmp_path / "run"} --engine-opt hf_token=hf-argcanary-2 --engine-opt dtype=bfloat16')
    p = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    line = [x for x in p.stderr.splitlines() if "] mtg eval" in x]
    assert len(line) == 1, p.stderr
    assert "canary" not in p.stderr + p.stdout
    assert "api_key=[redacted]" in line[0] and "hf_token=[redacted]" in line[0]
    assert "max_num_batched_tokens=8" in line[0] and "dtype=bfloat16" in line[0]
