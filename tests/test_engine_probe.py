"""An engine that is not there is learned in seconds (``Engine.probe`` before the first phase).

Real loopback servers: a refused port, and tests/fault_server.py (which lists one model).
Retries for errors in the middle of a run stay as they are (tests/test_openai_engine.py).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mtg_local import cli
from tests.fault_server import FaultServer

REPO = Path(__file__).resolve().parents[1]


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mtg(*argv: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("OPENAI_BASE_URL", None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mtg_local.cli", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.monotonic() - t0


def test_refused_connection_fails_in_seconds_with_one_line(tmp_path):
    # The new-user case: 244 s of retries before "the run failed".
    url = f"http://127.0.0.1:{refused_port()}/v1"
    proc, wall = mtg("baseline", "--method", "prompt_opt", "--engine", "openai:m", "--engine-opt", f"base_url={url}",
                     "--limit", "2", "--out", str(tmp_path / "run"))
    assert proc.returncode == 3, proc.stderr
    assert wall < 20, f"took {wall:.1f} s"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert url in lines[0] and "cannot reach" in lines[0] and "base_url" in lines[0]
    # the run dir says so too, and mtg report lists it as failed (a cell of an array grid shows up)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["status"] == "failed" and "cannot reach" in res["error"] and res["engine_usage"]["requests"] == 0
    rep, _ = mtg("report", str(tmp_path / "run"), "--out", str(tmp_path / "rep"), "--no-plots")
    assert rep.returncode == 0, rep.stderr
    problems = list(csv.DictReader((tmp_path / "rep" / "problems.csv").open()))
    assert [x["kind"] for x in problems] == ["failed"] and "cannot reach" in problems[0]["detail"]


def test_unknown_model_fails_in_seconds_naming_what_the_server_serves(tmp_path):
    with FaultServer(fault_rate=0.0) as srv:
        t0 = time.monotonic()
        rc = cli.main(["eval", "--engine", "openai:no-such-model", "--engine-opt", f"base_url={srv.base_url}",
                       "--method", "zero_shot_cot", "--limit", "2", "--seeds", "0", "--out", str(tmp_path / "run")])
        wall = time.monotonic() - t0
        paths = [c.path for c in srv.calls]
    assert rc == 3 and wall < 10
    assert paths == ["/v1/models"]  # one probe, no generation request
    # and a listed model runs as before (the probe also settles prefill=auto: still one /models call)
    with FaultServer(fault_rate=0.0) as srv:
        assert cli.main(["eval", "--engine", "openai:fault-model", "--engine-opt", f"base_url={srv.base_url}",
                         "--method", "zero_shot_cot", "--limit", "2", "--seeds", "0", "--no-progress",
                         "--out", str(tmp_path / "ok")]) == 0
        paths = [c.path for c in srv.calls]
    assert paths.count("/v1/models") == 1 and paths.count("/v1/chat/completions") == 2


def test_grid_on_a_refused_engine_exits_3_before_any_cell(tmp_path, capsys):
    url = f"http://127.0.0.1:{refused_port()}/v1"
    g = tmp_path / "g.yaml"
    g.write_text(yaml.safe_dump({
        "name": "g", "runs_root": str(tmp_path / "runs"), "tasks": ["synthetic_word_sorting"],
        "methods": ["zero_shot_cot", "solution_opt"], "engines": ["openai:m"], "engine_opts": [f"base_url={url}"],
        "seeds": [0], "args": {"all": ["--limit", "2"]}}))
    t0 = time.monotonic()
    assert cli.main(["grid", str(g)]) == 3
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert url in err.splitlines()[-1] and "[grid] start " not in err
    assert not list((tmp_path / "runs").rglob("results.json"))
