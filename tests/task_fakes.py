"""The worked-example tasks of docs/tasks.md, copied outside the repo, and a scripted model that knows them.

``example_tasks(tmp)`` copies ``docs/examples/tasks`` (the numeric JSONL task ``sums`` and the
multiple-choice CSV task ``capitals``) into ``tmp``, as a user's task files would be, and
writes a third, ``sums_scored.yaml``: ``sums`` scored by a Python scorer beside it that
returns feedback (marked ``SCORER-FEEDBACK``) and raises on one question.

``TaskModel`` answers every kind of request the methods send, from the gold answers it
reads from the data files: a forward or inner-loop answer ends with ``Answer: <gold>``
(wrong on purpose for the questions in ``wrong``); an update or TGD step wraps its text in
TextGrad's tags; meta calls are answered as ``meta_fakes`` answers them; DSPy's ChatAdapter
requests get their fields; GEPA's reflection gets a new instruction.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

from engines.base import GenRequest
from engines.fake_engine import FakeEngine
from mtg_local.prompts import textgrad_prompts as TP
from tests.meta_fakes import META_FEEDBACK, META_GRADIENT, is_meta_backward, is_meta_eval, meta_tgd_target

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples" / "tasks"
REFLECTION_MARK = "I provided an assistant with instructions"  # DSPy-GEPA's reflection signature
_OUT = re.compile(r"Your output fields are:\n(.*?)\n(?:All interactions|$)", re.S)
_NAME = re.compile(r"^\d+\. `(\w+)`", re.M)

SCORER = '''"""The user's scorer of sums_scored.yaml: exact number on the answer line, with feedback."""
from mtg_local.tasks.answer_parsing import extract_number


def score(response, example):
    if "Sam had" in example.question and "stickers" in example.question:
        raise RuntimeError("this scorer cannot read sticker questions")
    got = extract_number(response)
    if got == example.answer:
        return 1.0, "SCORER-FEEDBACK: correct"
    return 0.0, f"SCORER-FEEDBACK: expected {example.answer}, read {got}"
'''


def example_tasks(tmp: Path) -> dict[str, Path]:
    """The worked examples' task files, copied to ``tmp/tasks`` (outside the repo), by task name."""
    dest = tmp / "tasks"
    shutil.copytree(EXAMPLES, dest, dirs_exist_ok=True)
    (dest / "scorer.py").write_text(SCORER)
    (dest / "sums_scored.yaml").write_text(
        "name: sums_scored\ndata: sums.jsonl\nquestion: question\nanswer: answer\n"
        "answer_type: python\nscorer: scorer:score\n")
    return {"sums": dest / "sums.yaml", "capitals": dest / "capitals.yaml", "sums_scored": dest / "sums_scored.yaml"}


def gold_answers() -> dict[str, str]:
    """Question text -> gold answer (a number, or the correct letter) of both worked examples."""
    gold = {}
    for line in (EXAMPLES / "sums.jsonl").read_text().splitlines():
        row = json.loads(line)
        gold[row["question"]] = str(row["answer"])
    with open(EXAMPLES / "capitals.csv", newline="") as f:
        for row in csv.DictReader(f):
            gold[row["question"]] = row["answer"]
    return gold


def _text(req: GenRequest) -> str:
    return "\n".join(m.content for m in req.messages or ()) + (req.prompt or "") + req.response_prefix


class TaskModel(FakeEngine):
    """The scripted model of the module docstring; ``seen`` keeps every request text."""

    def __init__(self, *, wrong: tuple[str, ...] = (), name: str = "task-model") -> None:
        self.gold = gold_answers()
        self.wrong = wrong
        self.seen: list[str] = []
        super().__init__(self.respond, name=name)

    def answer(self, text: str) -> str | None:
        """The answer this model gives to the last worked-example question quoted in ``text``."""
        found = [(text.rfind(q), q) for q in self.gold if q in text]
        if not found:
            return None
        q = max(found)[1]
        gold = self.gold[q]
        if any(w in q for w in self.wrong):
            gold = str(int(gold) + 1) if gold.isdigit() else "ABCD"[("ABCD".index(gold) + 1) % 4]
        return gold

    def respond(self, req: GenRequest) -> str:
        text = _text(req)
        self.seen.append(text)
        if REFLECTION_MARK in text:
            return '{"new_instruction": "Read the question twice, then answer on the last line."}'
        if is_meta_eval(req):
            return META_FEEDBACK
        if is_meta_backward(req):
            return META_GRADIENT
        system = req.messages[0].content if req.messages and req.messages[0].role == "system" else ""
        fields = _OUT.search(system)
        if fields:  # DSPy's ChatAdapter
            gold = self.answer(req.messages[-1].content) or "1"
            out = [f"[[ ## {n} ## ]]\n{gold if n == 'answer' else f'some {n} text'}"
                   for n in _NAME.findall(fields.group(1))]
            return "\n\n".join(out) + "\n\n[[ ## completed ## ]]"
        opened = "" if req.response_prefix.endswith(TP.IMPROVED_VARIABLE_START) else TP.IMPROVED_VARIABLE_START
        if meta_tgd_target(req) is not None:
            return f"{opened}An improved text for step {req.sampling.seed}.{TP.IMPROVED_VARIABLE_END}"
        gold = self.answer(text)
        reply = f"Working it out.\nAnswer: {gold}" if gold is not None else "The answer looks fine to me."
        if opened == "" or TP.IMPROVED_VARIABLE_START in (req.messages[-1].content if req.messages else ""):
            return f"{opened}{reply}{TP.IMPROVED_VARIABLE_END}"
        return reply
