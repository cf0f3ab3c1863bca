"""The README's Python example (also in docs/tasks.md, "From Python") runs as written on the bundled model.

It meta-trains one outer step on two questions with one seed, small token caps. The engine it
names, ``vllm:bundled``, is the session's shared engine (``vllm_engine``): the example's code
is executed unchanged, only the engine start is skipped. Real because the example promises a
run on the bundled model, through ``train`` and a user's scorer, end to end.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tasks.md"


def readme_example() -> str:
    text = DOCS.read_text()
    marker = text.index("<!-- readme-example:")
    m = re.compile(r"```python\n(.*?)```", re.S).search(text, marker)
    assert m is not None
    return m.group(1)


def test_the_example_is_about_twenty_lines_with_a_scorer_and_one_train_call():
    code = readme_example()
    assert 15 <= len([ln for ln in code.splitlines() if ln.strip()]) <= 25
    assert code.count("train(") == 1 and "def score(" in code and 'engine="vllm:bundled"' in code
    compile(code, "readme-example", "exec")


def test_the_readme_shows_this_example_word_for_word():
    readme = (DOCS.parents[1] / "README.md").read_text()
    blocks = re.compile(r"```python\n(.*?)```", re.S).findall(readme)
    assert readme_example() in blocks


@pytest.mark.vllm
def test_the_example_runs_on_the_bundled_model(vllm_engine, tmp_path, monkeypatch, capsys):  # noqa: ANN001
    import mtg_local.meta.train_run as train_run

    def shared(spec: str, **options):  # noqa: ANN202
        assert spec == "vllm:bundled" and not options
        return vllm_engine

    monkeypatch.setattr(train_run, "create_engine", shared)
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "readme-example", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out.strip()
    res = json.loads((tmp_path / "runs" / "small_sums" / "results.json").read_text())
    assert res["status"] == "complete" and res["task"] == "small_sums" and res["method"] == "learned_loss"
    assert res["n_questions"] == 2 and len(res["history"]) >= 1
    assert res["task_info"]["identity"]["kind"] == "python" and res["task_info"]["scorer_errors"]["count"] == 0
    assert printed.startswith(str(res["test_accuracy"]["mean"]))
    trajs = [json.loads(x) for x in (tmp_path / "runs" / "small_sums" / "trajectories.jsonl").read_text().splitlines()]
    assert all(t["score"] in (0.0, 0.5, 1.0) for t in trajs)  # the user's scorer scored every answer
