"""SLURM integration: real slurmctld/slurmd started by scripts/slurm_local.sh (fake GPUs).

* a job array over a 2-task x 2-method grid (``mtg slurm submit``), then ``mtg report``;
* preemption: USR1 to the batch shell -> checkpoint -> exit 99 -> requeue -> resume,
  with results identical to an uninterrupted run;
* ``--shared``: ``mtg slurm submit --shared`` -> one job running ``mtg grid`` -> USR1 (SLURM's
  warning before the time limit) -> every cell in flight interrupted, exit 99 -> requeue ->
  the requeued job skips the complete cells and finishes the others;
* learn-then-transfer in one submission: a transfer cell's job waits for its source's job
  (array: ``afterok`` on the source's array task; ``--shared``: a later stage with ``afterany``),
  then runs and records the source; a failed source's dependents are cancelled, never run;
* the GPU templates are accepted on the fake-GPU node and run the CPU override;
* run-dir lock and grid expansion (plain unit tests, no daemons).

Slurm tests skip only when ``sbatch`` is absent and CI is not set; under CI=true they run
(scripts/slurm_local.sh installs Slurm from apt when missing).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtg_local.runs.lock import RunDirLock, RunDirLockedError, is_locked
from mtg_local.slurm import GridError, load_grid, parse_grid, plan
from tests.conftest import SLURM_VLLM_OPTS, require_spec

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_local.sh"
FIXTURES = REPO / "tests" / "fixtures"
MTG = str(Path(sys.executable).parent / "mtg")
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

needs_slurm = pytest.mark.skipif(
    shutil.which("sbatch") is None and not CI,
    reason="sbatch not installed and CI not set (scripts/slurm_local.sh start DIR installs and starts Slurm)",
)


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            if port + 1 < 65535:
                return port
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A private Slurm (4 fake GPUs, 64 CPUs and ~1 TB advertised) for this module; stopped afterwards."""
    d = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, SLURM_LOCAL_PORT=str(_free_port_pair()), SLURM_LOCAL_GPUS="4", SLURM_LOCAL_CPUS="64",
               SLURM_LOCAL_MEM_MB="1000000")
    subprocess.run(["bash", str(SCRIPT), "start", str(d)], env=env, check=True, timeout=300)
    env = dict(os.environ, SLURM_CONF=str(d / "etc" / "slurm.conf"))
    env.pop("SLURM_JOB_ID", None)
    yield env
    subprocess.run(["bash", str(SCRIPT), "stop", str(d)], env=env, timeout=120)


def sh(args: list[str], env: dict, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> exit {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def sbatch(args: list[str], env: dict) -> str:
    return sh(["sbatch", "--parsable", *args], env).stdout.strip().split(";")[0]


def job_states(job: str, env: dict) -> dict[str, str]:
    """JobId (array tasks as ARRAY_TASK) -> state, from scontrol (kept MinJobAge=300 s)."""
    out = sh(["scontrol", "-o", "show", "job", job], env, check=False).stdout
    states = {}
    for line in out.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        key = f"{f['ArrayJobId']}_{f['ArrayTaskId']}" if "ArrayTaskId" in f else f.get("JobId", "?")
        states[key] = f.get("JobState", "?")
    return states


def job_fields(job: str, env: dict) -> dict[str, dict[str, str]]:
    """JobId (array tasks as ARRAY_TASK) -> every field scontrol shows for it."""
    out = sh(["scontrol", "-o", "show", "job", job], env, check=False).stdout
    jobs = {}
    for line in out.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        jobs[f"{f['ArrayJobId']}_{f['ArrayTaskId']}" if "ArrayTaskId" in f else f.get("JobId", "?")] = f
    return jobs


def wait_done(job: str, env: dict, timeout: float, release_requeued: bool = False) -> dict[str, str]:
    """Polls until no task of ``job`` is pending/running; optionally releases requeue holds."""
    end = time.monotonic() + timeout
    pending_since: float | None = None
    while time.monotonic() < end:
        states = job_states(job, env)
        active = {k: s for k, s in states.items() if s in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING",
                                                             "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED")}
        if states and not active:
            time.sleep(1.0)  # a requeue in progress can look final for a moment: confirm
            again = job_states(job, env)
            if again == states:
                return states
            continue
        pending = any(s == "PENDING" for s in active.values())
        pending_since = (pending_since or time.monotonic()) if pending else None
        # A requeued job waits ~2 min (BeginTime) unless told to start now; starting it at once
        # races the end of its previous run ("Killing non-startable batch job: Job credential
        # revoked"), so it is released only after a few seconds in the queue.
        if release_requeued and pending_since is not None and time.monotonic() - pending_since > 5:
            sh(["scontrol", "update", f"jobid={job}", "StartTime=now"], env, check=False)
        time.sleep(0.5)
    raise AssertionError(f"job {job} not finished within {timeout}s: {job_states(job, env)}")


def _log(path: Path) -> str:
    return path.read_text() if path.exists() else f"(no log at {path})"


# --------------------------------------------------------------------------------------- slurm


@pytest.mark.slurm
@needs_slurm
def test_array_grid_two_tasks_two_methods_then_report(cluster, tmp_path):
    mmlu = FIXTURES / "tasks_mmlu_machine_learning.jsonl"
    tasks = ["synthetic_word_sorting", {"name": "mmlu_machine_learning", "data_file": str(mmlu)}] if mmlu.exists() \
        else ["synthetic_word_sorting", {"name": "word_sorting", "label": "ws2", "args": ["--data-file", "x"]}]
    engines = ["fake"]
    grid = {
        "name": "tiny", "runs_root": str(tmp_path / "runs"), "tasks": tasks,
        "methods": ["zero_shot_cot", "solution_opt"], "engines": engines, "seeds": [0, 1],
        "args": {"all": ["--limit", "2", "--no-progress", "--max-tokens", "32", "--steps", "1"]},  # one protocol
        "slurm": {"gpus": 0, "max_parallel": 2, "time": "00:10:00", "cpus_per_task": 1, "mem": "1G"},
    }
    gfile = tmp_path / "grid.json"  # JSON is YAML
    gfile.write_text(json.dumps(grid))
    dry = sh([MTG, "slurm", "submit", str(gfile), "--dry-run"], cluster)
    assert "sbatch --parsable --array=0-3%2" in dry.stdout and "3: mtg eval" in dry.stdout
    assert not (tmp_path / "runs" / "tiny" / "manifest.txt").exists()

    out = sh([MTG, "slurm", "submit", str(gfile)], cluster).stdout
    job = out.split("submitted array job ")[1].split(":")[0]
    states = wait_done(job, cluster, timeout=240)
    logs = tmp_path / "runs" / "tiny" / "logs"
    assert len(states) == 4 and set(states.values()) == {"COMPLETED"}, (states, [_log(p) for p in logs.glob("*")])
    results = sorted((tmp_path / "runs" / "tiny").rglob("results.json"))
    assert len(results) == 4 and all(json.loads(p.read_text())["status"] == "complete" for p in results)

    rep = tmp_path / "report"
    sh([MTG, "report", str(tmp_path / "runs" / "tiny"), "--out", str(rep)], cluster)
    md = (rep / "report.md").read_text()
    assert "Zero-Shot CoT" in md and "Solution Optimization (TextGrad)" in md and "(n=2)" in md
    assert "Left out" not in md
    assert len((rep / "results.csv").read_text().splitlines()) == 5
    assert list((rep / "plots").glob("accuracy_*.png"))


@pytest.mark.slurm
@needs_slurm
@pytest.mark.vllm
def test_array_task_on_bundled_vllm(cluster, tmp_path):
    """One array task on the real vLLM engine with the bundled model (CPU; ~40 s start-up).

    The only SLURM job on vLLM (the job's environment, the engine's start inside it); the other SLURM
    tests run the scripted engine, as what they prove is SLURM's side; the real engine's own stops and
    resumes are tests/test_lifecycle_vllm.py's and tests/test_grid_vllm.py's.
    """
    require_spec("vllm")  # a missing vllm fails under CI=true
    grid = {
        "name": "bundled", "runs_root": str(tmp_path / "runs"), "tasks": ["synthetic_word_sorting"],
        "methods": ["zero_shot_cot"], "engines": ["vllm:bundled"], "seeds": [0],
        "engine_opts": list(SLURM_VLLM_OPTS),
        "args": {"all": ["--limit", "1", "--no-progress", "--max-tokens", "16"]},
        "slurm": {"gpus": 1, "time": "00:15:00", "cpus_per_task": 2, "mem": "8G"},
    }
    gfile = tmp_path / "grid.json"
    gfile.write_text(json.dumps(grid))
    job = sh([MTG, "slurm", "submit", str(gfile)], cluster).stdout.split("submitted array job ")[1].split(":")[0]
    states = wait_done(job, cluster, timeout=900)
    logs = "\n".join(_log(p) for p in (tmp_path / "runs" / "bundled" / "logs").glob("*"))
    assert set(states.values()) == {"COMPLETED"}, logs
    (res,) = (tmp_path / "runs" / "bundled").rglob("results.json")
    body = json.loads(res.read_text())
    assert body["status"] == "complete" and body["engine"] == "vllm:bundled"
    assert body["engine_usage"]["completion_tokens"] > 0


@pytest.mark.slurm
@needs_slurm
def test_preempted_train_job_requeues_resumes_and_matches_uninterrupted(cluster, tmp_path):
    # The job's engine is `fake` slowed to 0.1 s per call (~1 s per outer step), so USR1 lands mid-run.
    args = "--outer-steps 10 --limit 2 --no-progress"
    common = ["--task", "synthetic_word_sorting", "--method", "maml", "--engine", "fake", "--seeds", "0,1"]
    ref = tmp_path / "ref"
    sh([MTG, "train", *common, *args.split(), "--out", str(ref)], cluster, timeout=300)

    run = tmp_path / "preempted"
    log = tmp_path / "job.out"
    exports = (f"ALL,MTG_CHECKOUT={REPO},MTG_ENGINE=fake,MTG_ENGINE_OPTS=delay_s=0.1,MTG_TP=1,"
               f"MTG_TASK=synthetic_word_sorting,MTG_METHOD=maml,MTG_SEEDS=0-1,MTG_ARGS={args},MTG_RUN_DIR={run}")
    job = sbatch([f"--output={log}", "--gres=gpu:1", "--cpus-per-task=1", "--mem=1G", f"--export={exports}",
                  str(REPO / "slurm" / "mtg_gpu.sbatch")], cluster)
    ckpt = run / "checkpoint.json"
    end = time.monotonic() + 120
    while not (ckpt.exists() and json.loads(ckpt.read_text() or "{}").get("completed_step", -1) >= 1):
        assert time.monotonic() < end, f"no checkpoint: {job_states(job, cluster)} {_log(log)}"
        time.sleep(0.1)
    assert is_locked(run)  # the running mtg holds the run-dir lock
    sh(["scancel", "--signal=USR1", "--batch", job], cluster)
    states = wait_done(job, cluster, timeout=240, release_requeued=True)
    text = _log(log)
    assert states == {job: "COMPLETED"}, text
    assert "received SIGUSR1" in text and "exited with 99" in text and "requeueing job" in text, text
    assert "restart=1" in text and f"mtg train --resume {run}" in text, text
    events = [json.loads(line)["event"] for line in (run / "events.jsonl").read_text().splitlines()]
    assert "preempted" in events

    a, b = (json.loads((d / "results.json").read_text()) for d in (ref, run))
    assert b["status"] == "complete"
    assert a["test_accuracy"] == b["test_accuracy"]
    assert a["learned"] == b["learned"]
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("t", "wall_s")} for e in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"]) and len(a["history"]) == 11
    for name in ("learned_template.txt", "learned_loss_prompt.txt"):
        assert (ref / name).exists() == (run / name).exists()
        if (ref / name).exists():
            assert (ref / name).read_text() == (run / name).read_text()


@pytest.mark.slurm
@needs_slurm
def test_shared_grid_job_usr1_requeues_and_the_rerun_completes_every_cell(cluster, tmp_path):
    # The engine inside is `fake` (slowed to 0.5 s per call so the signal lands mid-run): what is
    # real here is SLURM -- the template, its trap, the requeue; the real engine's grid is
    # tests/test_grid_vllm.py.
    grid = {
        "name": "shared", "runs_root": str(tmp_path / "runs"), "tasks": ["synthetic_word_sorting"],
        "methods": ["zero_shot_cot", "solution_opt", "learned_loss"], "engines": ["fake"],
        "engine_opts": ["delay_s=0.5"], "seeds": [0, 1],
        # one protocol for every cell, train-only fields included: a --protocol file
        "args": {"all": ["--protocol", str(tmp_path / "protocol.json"), "--no-progress"]},
        # 30 min: mtg_grid.sbatch asks for USR1 600 s before the limit, so a 10 min limit would have
        # SLURM signal the requeued job again on its own
        "slurm": {"gpus": 1, "time": "00:30:00", "cpus_per_task": 1, "mem": "1G"},
    }
    (tmp_path / "protocol.json").write_text(json.dumps({"limit": 2, "steps": 1, "max_tokens": 32, "outer_steps": 2,
                                                         "minibatch": 1}))
    gfile = tmp_path / "grid.json"
    gfile.write_text(json.dumps(grid))
    out = sh([MTG, "slurm", "submit", str(gfile), "--shared"], cluster).stdout
    job = out.split("submitted grid job ")[1].split(":")[0]
    root = tmp_path / "runs" / "shared" / "synthetic_word_sorting"
    log = tmp_path / "runs" / "shared" / "logs" / f"grid-fake-{job}.out"
    ckpt = root / "learned_loss" / "fake" / "checkpoint.json"
    end = time.monotonic() + 120
    while not (ckpt.exists() and (root / "zero_shot_cot" / "fake" / "results.json").exists()):
        states = job_states(job, cluster)
        assert time.monotonic() < end and states.get(job) in (None, "PENDING", "RUNNING", "CONFIGURING"), \
            f"no progress: {states} {_log(log)}"
        time.sleep(0.1)
    sh(["scancel", "--signal=USR1", "--batch", job], cluster)
    states = wait_done(job, cluster, timeout=240, release_requeued=True)
    text = _log(log)
    assert states == {job: "COMPLETED"}, text
    assert "received SIGUSR1" in text and "exited with 99" in text and "requeueing job" in text, text
    assert "restart=1" in text and text.count(f"mtg grid {gfile}") == 2, text
    assert "[grid] skip   synthetic_word_sorting/zero_shot_cot/fake" in text, text  # complete before USR1
    interrupted = []
    for method in ("zero_shot_cot", "solution_opt", "learned_loss"):
        d = root / method / "fake"
        assert json.loads((d / "results.json").read_text())["status"] == "complete", (method, text)
        if any(json.loads(x)["event"] == "interrupted" for x in (d / "events.jsonl").read_text().splitlines()):
            interrupted.append(method)
    assert "learned_loss" in interrupted and "zero_shot_cot" not in interrupted, (interrupted, text)
    summary = json.loads((tmp_path / "runs" / "shared" / "grid-fake.json").read_text())
    counts = summary["counts"]  # the rerun's: cells complete before USR1 were skipped
    assert set(counts) == {"skipped", "complete"} and counts["complete"] >= 1 and not summary["stopped"], counts


def transfer_grid(tmp_path: Path, **over) -> Path:
    """A learn-then-transfer grid on the fake engine (slowed so a source runs for seconds)."""
    (tmp_path / "protocol.json").write_text(json.dumps({"limit": 2, "steps": 1, "max_tokens": 32, "outer_steps": 1,
                                                         "minibatch": 1}))
    grid = {"name": "lt", "runs_root": str(tmp_path / "runs"), "tasks": ["synthetic_word_sorting"],
            "methods": ["learned_loss"], "engines": ["fake"], "engine_opts": ["delay_s=0.2"], "seeds": [0],
            "args": {"all": ["--protocol", str(tmp_path / "protocol.json"), "--no-progress"]},
            # 30 min: mtg_grid.sbatch's --signal=B:USR1@600 would fire at once under a 10-min limit
            "slurm": {"gpus": 0, "time": "00:30:00", "cpus_per_task": 1, "mem": "1G"}, **over}
    gfile = tmp_path / "grid.json"
    gfile.write_text(json.dumps(grid))
    return gfile


def watch(jobs: list[str], env: dict, timeout: float) -> tuple[dict[str, dict[str, str]], set[tuple[str, str, str]]]:
    """Polls ``jobs`` until none is pending or running; returns their last fields and every
    (job, state, reason) seen on the way."""
    seen: set[tuple[str, str, str]] = set()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        fields = {k: v for j in jobs for k, v in job_fields(j, env).items()}
        seen |= {(k.split("_")[0], f.get("JobState", "?"), f.get("Reason", "?")) for k, f in fields.items()}
        if fields and all(f.get("JobState") not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")
                          for f in fields.values()):
            return fields, seen
        time.sleep(0.3)
    raise AssertionError(f"jobs {jobs} not finished within {timeout}s: {seen}")


def assert_applied(transfer_dir: Path, source_dir: Path) -> None:
    from mtg_local.runs.transfer import run_id

    body, source = (json.loads((d / "results.json").read_text()) for d in (transfer_dir, source_dir))
    assert body["status"] == "complete" and source["status"] == "complete"
    assert body["source"]["run_dir"] == str(source_dir) and body["source"]["run_id"] == run_id(source)
    assert body["started_at"] >= source["finished_at"]


@pytest.mark.slurm
@needs_slurm
def test_array_transfer_job_waits_for_its_source_task_then_runs(cluster, tmp_path):
    bbh = FIXTURES / "tasks_bbh_word_sorting.jsonl"
    gfile = transfer_grid(tmp_path, tasks=[
        "synthetic_word_sorting", {"name": "word_sorting", "data_file": str(bbh), "label": "bbh"},
        {"name": "word_sorting", "data_file": str(tmp_path / "missing.jsonl"), "label": "broken"}],
        transfer=[{"from": "synthetic_word_sorting/learned_loss/fake", "tasks": ["bbh"]},
                  {"from": "broken/learned_loss/fake", "tasks": ["synthetic_word_sorting"]}])
    out = sh([MTG, "slurm", "submit", str(gfile)], cluster).stdout
    ids = [line.split("submitted array job ")[1].split(":")[0] for line in out.splitlines()
           if line.startswith("submitted array job")]
    assert len(ids) == 3 and f", after {ids[0]}_0" in out and f", after {ids[0]}_2" in out, out
    fields, seen = watch(ids, cluster, timeout=180)
    logs = "\n".join(_log(p) for p in (tmp_path / "runs" / "lt" / "logs").glob("*"))
    src, transfer, cancelled = fields[f"{ids[0]}_0"], fields[f"{ids[1]}_0"], fields[f"{ids[2]}_0"]
    assert (ids[1], "PENDING", "Dependency") in seen, seen  # it waited ...
    assert transfer["JobState"] == "COMPLETED" and transfer["StartTime"] >= src["EndTime"], (fields, logs)  # ... then ran
    assert fields[f"{ids[0]}_2"]["JobState"] == "FAILED"  # the broken source
    assert cancelled["JobState"] == "CANCELLED" and cancelled["Reason"] == "DependencyNeverSatisfied", cancelled
    root = tmp_path / "runs" / "lt"
    assert_applied(root / "bbh" / "solution_opt@synthetic_word_sorting.learned_loss.fake" / "fake",
                   root / "synthetic_word_sorting" / "learned_loss" / "fake")
    assert not (root / "synthetic_word_sorting" / "solution_opt@broken.learned_loss.fake").exists()


@pytest.mark.slurm
@needs_slurm
def test_shared_transfer_to_another_engine_runs_in_a_later_job(cluster, tmp_path):
    gfile = transfer_grid(tmp_path, engines=[{"spec": "fake", "label": "a"}, {"spec": "fake", "label": "b"}],
                          transfer=[{"from": "synthetic_word_sorting/learned_loss/a", "engines": ["b"]}])
    out = sh([MTG, "slurm", "submit", str(gfile), "--shared"], cluster).stdout
    ids = [line.split("submitted grid job ")[1].split(":")[0] for line in out.splitlines()
           if line.startswith("submitted grid job")]
    assert len(ids) == 3 and f"(stage 1) on one engine, after {ids[0]}" in out, out
    fields, seen = watch(ids, cluster, timeout=180)
    logs = "\n".join(_log(p) for p in (tmp_path / "runs" / "lt" / "logs").glob("*"))
    assert {f["JobState"] for f in fields.values()} == {"COMPLETED"}, (fields, logs)
    assert (ids[2], "PENDING", "Dependency") in seen, seen
    assert fields[ids[2]]["StartTime"] >= fields[ids[0]]["EndTime"]
    assert f"mtg grid {gfile} --max-concurrent 32 --engine b --runs-root {tmp_path / 'runs'} --stage 1" in logs
    root = tmp_path / "runs" / "lt"
    assert_applied(root / "synthetic_word_sorting" / "solution_opt@synthetic_word_sorting.learned_loss.a" / "b",
                   root / "synthetic_word_sorting" / "learned_loss" / "a")
    assert json.loads((root / "grid-b-stage1.json").read_text())["counts"] == {"complete": 1}


@pytest.mark.slurm
@needs_slurm
def test_gpu_templates_accepted_on_fake_gpu_node_and_run_cpu_override(cluster, tmp_path):
    base = (f"ALL,MTG_CHECKOUT={REPO},MTG_ENGINE=fake,MTG_TP=1,MTG_TASK=synthetic_word_sorting,MTG_SEEDS=0,"
            "MTG_ARGS=--limit 1 --no-progress")
    jobs = {}
    for name, extra in (("mtg_gpu", []), ("mtg_multigpu", [])):
        log = tmp_path / f"{name}.out"
        jobs[name] = (sbatch([f"--output={log}", *extra, f"--export={base},MTG_RUN_DIR={tmp_path / name}",
                              str(REPO / "slurm" / f"{name}.sbatch")], cluster), log)
    # tensor parallel size from the allocation (dry run: logs the mtg command only)
    log = tmp_path / "tp.out"
    jobs["tp"] = (sbatch([f"--output={log}", "--gres=gpu:4", f"--export=ALL,MTG_CHECKOUT={REPO},MTG_DRY_RUN=1",
                          str(REPO / "slurm" / "mtg_multigpu.sbatch")], cluster), log)
    log = tmp_path / "openai.out"
    env = {k: v for k, v in cluster.items() if k != "OPENAI_API_KEY"}
    jobs["openai"] = (sbatch([f"--output={log}", f"--export=ALL,MTG_CHECKOUT={REPO}",
                              str(REPO / "slurm" / "mtg_openai.sbatch")], env), log)
    for name, (job, log) in jobs.items():
        states = wait_done(job, cluster, timeout=120)
        text = _log(log)
        if name == "openai":
            assert states[job] == "FAILED" and "OPENAI_API_KEY is not set" in text, text
            continue
        assert states[job] == "COMPLETED", (name, text)
        if name == "tp":
            assert "gpus='0,1,2,3'" in text and "tensor_parallel_size=4" in text
            assert "--engine vllm:Qwen/Qwen2.5-72B-Instruct" in text, text
        else:
            assert "gpus='0" in text, text  # CUDA_VISIBLE_DEVICES set by the fake-GPU gres
            assert json.loads((tmp_path / name / "results.json").read_text())["status"] == "complete"
    # the multi-node Ray template is syntactically valid and its directives pass sbatch on one node
    sh(["bash", "-n", str(REPO / "slurm" / "mtg_multinode_ray.sbatch")], cluster)
    r = sh(["sbatch", "--test-only", "--nodes=1", "--gres=gpu:4", str(REPO / "slurm" / "mtg_multinode_ray.sbatch")],
           cluster, check=False)
    assert "to start at" in r.stderr, r.stderr


# ----------------------------------------------------------------------------------- no daemons


def test_run_dir_lock_names_holder_and_dies_with_process(tmp_path):
    rd = tmp_path / "run"
    code = (f"import time,sys; from mtg_local.runs.lock import RunDirLock; l=RunDirLock({str(rd)!r}).acquire();"
            "print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, SLURM_JOB_ID="77"))
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLockedError, match=rf"in use by pid {p.pid} on host .*SLURM job 77"):
            RunDirLock(rd).acquire()
        assert is_locked(rd)
    finally:
        p.kill()  # SIGKILL: no cleanup code runs
        p.wait()
    with RunDirLock(rd) as lock:  # the kernel released it
        assert lock.held and is_locked(rd)
    assert not is_locked(rd)


def test_grid_expansion_and_dry_run_command(tmp_path, monkeypatch):
    grid = load_grid(REPO / "slurm" / "grid_example.yaml", runs_root=str(tmp_path))
    runs = grid.expand()
    assert len(runs) == 3 * 6 * 2
    first = runs[0]
    assert first.command == "eval" and first.run_dir == tmp_path / "paper-7b/word_sorting/zero_shot_cot/vllm_Qwen_Qwen2.5-7B-Instruct"
    assert "--seeds" in first.argv and first.argv[first.argv.index("--seeds") + 1] == "0,1,2,3,4,5"
    ll = next(r for r in runs if r.method == "learned_loss")
    # one protocol for the whole grid: no per-method protocol flags (docs/protocol.md)
    assert ll.command == "train" and "--outer-steps" not in ll.argv and "--steps" not in ll.argv
    (job,) = plan(grid)
    assert "--array=0-35%8" in job.sbatch and "--gres=gpu:1" in job.sbatch and "--partition=gpu" in job.sbatch

    two = parse_grid({"name": "g", "tasks": ["word_sorting"], "methods": ["maml"],
                      "engines": ["vllm:a/b", {"spec": "vllm:big/model", "label": "big", "slurm": {"gpus": 4}}]},
                     runs_root=str(tmp_path))
    jobs = plan(two)
    assert len(jobs) == 2 and "--gres=gpu:4" in jobs[1].sbatch and jobs[1].manifest.name == "manifest-1.txt"


@pytest.mark.parametrize("bad, match", [
    ({"tasks": ["t"], "methods": ["nope"], "engines": ["fake"]}, "unknown method 'nope'"),
    ({"tasks": ["t"], "methods": ["maml"], "engines": ["fake"], "colour": 1}, "unknown grid keys"),
    ({"tasks": "t", "methods": ["maml"], "engines": ["fake"]}, "'tasks' must be a list"),
    ({"tasks": ["t"], "methods": ["maml"], "engines": ["gpt4"]}, "engine spec must look like"),
    ({"tasks": ["t", "t"], "methods": ["maml"], "engines": ["fake"]}, "share a label"),
    ({"tasks": ["t"], "methods": ["maml"], "engines": ["fake"], "seeds": ["a"]}, "'seeds' must be a list of integers"),
])
def test_grid_errors_name_the_problem(bad, match, tmp_path):
    with pytest.raises(GridError, match=match):
        parse_grid({"name": "g", **bad}, runs_root=str(tmp_path))
