"""``DefinedTask``: the task a declarative task file defines (its data, splits, prompts and answer rule).

Rows are read through ``datasets`` like every other task (``loading``): a local
JSON/JSONL/CSV/Parquet file, a Hub dataset, or rows given from Python. Without
``splits`` the usable rows are split with the protocol's data seed as the paper splits
MMLU and GPQA (``loading.one_to_three_split``: train:test = 1:3, validation half of the
train part); with ``splits`` every split comes from its own file or Hub split, in order.

A row that cannot become an example (an empty question, an answer that is no number,
an answer that is none of the options) is skipped and counted, or stops the load with
``strict``; a field the data does not have, or an empty split, is a ``TaskDefinitionError``
naming the task file and the key.
"""

from __future__ import annotations

import math
import random
import threading
from typing import Any

from mtg_local.tasks import answer_types as AT
from mtg_local.tasks.answer_parsing import numbers_equal, parse_number
from mtg_local.tasks.base import Example, ScoreResult, Splits, Task, short_hash
from mtg_local.tasks.errors import TaskDefinitionError
from mtg_local.tasks.loading import BadRow, DataSource, file_sha256, load_rows, one_to_three_split, parse_rows
from mtg_local.tasks.task_file import SPLIT_NAMES, DataSpec, TaskDefinition, template_fields

#: How a split without ``splits`` is made (recorded in describe()).
SEEDED_SPLIT_RULE = (
    "usable rows shuffled with random.Random(seed); first (n+2)//4 = train part (train = its first "
    "ceil half, val = the rest), remaining rows = test"
)
FILE_SPLIT_RULE = "splits as given (train, val, test from their own sources, in order)"


def option_permutation(seed: int, row_number: int, n: int) -> list[int]:
    """The presented order of a row's ``n`` options (original indices, letter by letter) under ``shuffle_choices``."""
    perm = list(range(n))
    random.Random(f"{seed}:{row_number}").shuffle(perm)
    return perm


class DefinedTask(Task):
    """A task defined by a ``TaskDefinition`` (see the module docstring).

    Args:
        definition: the validated task file.
        seed: the data seed (seeded split, option shuffling).
        strict: stop at the first bad row instead of skipping it.
        data_file: a local file read instead of the definition's ``data``
            (``--data-file``; not with ``splits``).
    """

    def __init__(self, definition: TaskDefinition, *, seed: int = 0, strict: bool = False,
                 data_file: str | None = None) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.definition = d = definition
        self.name = d.name
        self.seed, self.strict = seed, strict
        self.data = d.data
        self.schema = d.data if d.data is not None and d.data.kind == "hub" else None
        if data_file is not None:
            if d.splits is not None:
                raise TaskDefinitionError(d.where, "splits", "names every split's data; --data-file replaces "
                                                               "'data' only in a task without 'splits'")
            from pathlib import Path

            from mtg_local.tasks.loading import FILE_BUILDERS

            p = Path(data_file).expanduser().resolve()  # one file named two ways is one file
            if p.suffix.lower() not in FILE_BUILDERS:
                raise TaskDefinitionError(d.where, "data", f"data file {data_file}: unsupported format "
                                          f"{p.suffix or '(no suffix)'!r}; use one of {', '.join(sorted(FILE_BUILDERS))}")
            self.data = DataSpec("file", file=p, json_field=d.data.json_field if d.data is not None else None)
        fmt, role, loss = AT.DEFAULT_TEXTS[d.answer_type]
        self._format = d.format_instruction if d.format_instruction is not None else fmt
        self.answer_role = d.role if d.role is not None else role
        self.initial_loss_prompt = d.initial_loss_prompt if d.initial_loss_prompt is not None else loss
        self.inference_template = d.inference_template
        self._splits: Splits | None = None
        self._rows = 0
        self._fingerprints: dict[str, Any] = {}
        self._scorer_errors: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    # -- loading ------------------------------------------------------------------
    def splits(self) -> Splits:
        """Loads the rows once, drops/records bad ones and splits them (see the module docstring)."""
        if self._splits is None:
            self._splits = self._load()
        return self._splits

    def _source(self, spec: DataSpec) -> DataSource:
        schema = self.schema
        if spec.kind == "file":
            return DataSource(schema.path if schema else self.name, schema.name if schema else None, ("file",),
                              data_file=str(spec.file), json_field=spec.json_field, owner=self.definition.where)
        return DataSource(spec.path or "", spec.name, spec.splits, gated=spec.gated, revision=spec.revision,
                          owner=self.definition.where)

    def _read(self, key: str, spec: DataSpec) -> tuple[list[dict[str, Any]], list[str]]:
        if spec.kind == "rows":
            rows, origins = [dict(r) for r in spec.rows], ["rows"] * len(spec.rows)
            self._fingerprints[key] = {"rows_sha256": short_hash(rows) if rows else None}
        else:
            info: dict[str, Any] = {}
            rows, origins = load_rows(self._source(spec), info=info)
            self._fingerprints[key] = ({"file_sha256": file_sha256(spec.file)} if spec.kind == "file" else
                                       {"hub": spec.path, "config": spec.name, "splits": list(spec.splits),
                                        "revision": spec.revision, "resolved": info.get("resolved")})
        if not rows:
            raise TaskDefinitionError(self.definition.where, key, "the data has no rows")
        self._check_fields(rows[0], key)
        return rows, origins

    def _check_fields(self, row: dict[str, Any], data_key: str) -> None:
        d = self.definition
        wanted: list[tuple[str, str]] = []
        if "{" in d.question:
            wanted += [("question", f) for f in template_fields(d.question)]
        else:
            wanted.append(("question", d.question))
        wanted.append(("answer", d.answer))
        if d.answer_type == "choice":
            wanted += [("choices", c) for c in ((d.choices,) if isinstance(d.choices, str) else d.choices)]
        for key, field in wanted:
            if field not in row:
                raise TaskDefinitionError(d.where, key, f"field {field!r} is not in the data ({data_key}); "
                                                        f"it has: {', '.join(sorted(map(str, row)))}")

    def _load(self) -> Splits:
        d = self.definition
        parts: dict[str, list[tuple[int, Any]]] = {}
        skipped: list[dict[str, Any]] = []
        origins: dict[str, list[str]] = {}
        if d.splits is not None:
            for split in SPLIT_NAMES:
                rows, origins[split] = self._read(f"splits.{split}", d.splits[split])
                label = f"{d.where}: {split} split"
                parsed, bad = parse_rows(rows, self._parse_row, label=label, strict=self.strict)
                skipped += [{**b, "split": split} for b in bad]
                self._rows += len(rows)
                if not parsed:
                    raise TaskDefinitionError(d.where, f"splits.{split}",
                                              f"the {split} split has no usable row ({len(bad)} skipped)")
                parts[split] = parsed
        else:
            assert self.data is not None
            rows, all_origins = self._read("data", self.data)
            parsed, skipped = parse_rows(rows, self._parse_row, label=d.where, strict=self.strict)
            self._rows = len(rows)
            by_row = dict(parsed)
            train, val, test = one_to_three_split(list(by_row), len(rows), self.seed)
            for split, numbers in zip(SPLIT_NAMES, (train, val, test)):
                if not numbers:
                    raise TaskDefinitionError(d.where, "data", f"{len(parsed)} usable row(s) of {len(rows)} "
                                                               f"({len(skipped)} skipped) leave the {split} split "
                                                               "empty; the seeded split needs at least 6 (or give "
                                                               "'splits')")
                parts[split] = [(r, by_row[r]) for r in numbers]
                origins[split] = all_origins

        def examples(split: str) -> tuple[Example, ...]:
            out = []
            for i, (r, (question, answer, choices, meta)) in enumerate(parts[split]):
                meta = {"row": r, "source_split": origins[split][r], **meta}
                out.append(Example(id=f"{split}-{i}", question=question, answer=answer, choices=choices, meta=meta))
            return tuple(out)

        return Splits(examples("train"), examples("val"), examples("test"), tuple(skipped))

    def _parse_row(self, row_number: int, row: dict[str, Any]) -> tuple[str, str, tuple[str, ...] | None, dict]:
        d = self.definition
        question = self._question(row)
        meta: dict[str, Any] = {k: row[k] for k in d.meta_fields if row.get(k) not in (None, "")}
        meta["fields"] = row
        value = row.get(d.answer)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise BadRow(f"missing field {d.answer!r}")
        if d.answer_type == "choice":
            options, correct = self._choice(row_number, row, value, meta)
            return f"{question}\n\n{AT.render_options(options)}", AT.LETTERS[correct], options, meta
        if d.answer_type == "number":
            gold = parse_number(str(value)) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
            if gold is None:
                raise BadRow(f"field {d.answer!r} {value!r} is not a number")
            return question, gold, None, meta
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return question, str(value).strip(), None, meta
        if d.answer_type == "python":  # the scorer reads the raw value from example.meta["fields"]
            import json

            return question, json.dumps(value, default=str), None, meta
        raise BadRow(f"field {d.answer!r} must be text or a number, got {type(value).__name__}")

    def _question(self, row: dict[str, Any]) -> str:
        d = self.definition
        if "{" not in d.question:
            value = row.get(d.question)
            if value is None or isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise BadRow(f"missing field {d.question!r}" if value is None else
                             f"field {d.question!r} must be text, got {type(value).__name__}")
            text = str(value)  # as the data has it (the paper's tasks keep TextGrad's unstripped text)
        else:
            text = d.question.format_map({k: "" if v is None else v for k, v in row.items()})
        if not text.strip():
            raise BadRow(f"empty field {d.question!r}" if "{" not in d.question else "the question template gives "
                         "an empty question")
        return text

    def _choice(self, row_number: int, row: dict[str, Any], value: Any,
                meta: dict[str, Any]) -> tuple[tuple[str, ...], int]:
        d = self.definition
        if isinstance(d.choices, str):
            raw = row.get(d.choices)
            if raw is None:
                raise BadRow(f"missing field {d.choices!r}")
            if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
                raise BadRow(f"field {d.choices!r} must be a list of options, got {type(raw).__name__}")
            options = list(raw)  # kept as the data has them (MMLU's, as TextGrad formats them)
        else:
            options = []
            for c in d.choices:
                v = row.get(c)
                if v is None or (isinstance(v, str) and not v.strip()):
                    raise BadRow(f"missing field {c!r}" if v is None else f"empty field {c!r}")
                options.append(v.strip() if isinstance(v, str) else v)  # CSV cells: stray spaces/newlines dropped
        for i, o in enumerate(options):
            if o is None or isinstance(o, bool) or not isinstance(o, (str, int, float)) or not str(o).strip():
                raise BadRow(f"choice {AT.LETTERS[i] if i < 26 else i} is empty or not text ({o!r})")
        options = [str(o) for o in options]
        n = len(options)
        if d.num_choices is not None and n != d.num_choices:
            raise BadRow(f"field {d.choices!r} has {n} options, expected {d.num_choices}")
        if not 2 <= n <= 26:
            raise BadRow(f"{n} options; a question needs 2 to 26")
        correct, by_text = self._correct(value, options)
        if (by_text or d.shuffle_choices) and len({AT.normalize_text(o) for o in options}) != n:
            raise BadRow(f"the {n} options are not distinct (the correct one would be ambiguous)")
        if d.shuffle_choices:
            perm = option_permutation(self.seed, row_number, n)
            options = [options[p] for p in perm]
            correct = perm.index(correct)
            meta["permutation"] = perm
        return tuple(options), correct

    def _correct(self, value: Any, options: list[str]) -> tuple[int, bool]:
        """(0-based index of the correct option, whether it was given as the option's text).

        An int is an index; a string is a letter (A..), else one option's text, else a
        digit string index.
        """
        d, n = self.definition, len(options)
        if isinstance(value, bool):
            raise BadRow(f"field {d.answer!r} must be an index, a letter or an option's text, got {value!r}")
        if isinstance(value, int):
            if not 0 <= value < n:
                raise BadRow(f"field {d.answer!r} {value} is outside the {n} choices (0-{n - 1})")
            return value, False
        text = str(value).strip()
        if len(text) == 1 and text.upper() in AT.LETTERS[:n] and text.isalpha():
            return AT.LETTERS.index(text.upper()), False
        said = AT.normalize_text(text)
        matches = [i for i, o in enumerate(options) if AT.normalize_text(o) == said]
        if len(matches) == 1:
            return matches[0], True
        if len(matches) > 1:
            raise BadRow(f"the {n} options are not distinct (the correct one would be ambiguous)")
        if text.isdigit() and int(text) < n:
            return int(text), False
        raise BadRow(f"field {d.answer!r} {value!r} is not a letter A-{AT.LETTERS[n - 1]}, an index 0-{n - 1} "
                     "or the text of exactly one option")

    # -- prompts ------------------------------------------------------------------
    def _n_choices(self, example: Example | None = None) -> int:
        if example is not None and example.choices:
            return len(example.choices)
        if self.definition.num_choices:
            return self.definition.num_choices
        s = self._splits
        return max((len(e.choices or ()) for e in (s.train + s.val + s.test)), default=4) if s else 4

    @property
    def format_instruction(self) -> str:  # type: ignore[override]
        """What the answer must look like (``choice``: simple-evals' line for the task's options)."""
        if self.definition.answer_type == "choice" and self.definition.format_instruction is None:
            return AT.choice_format_instruction(self._n_choices())
        return self._format

    @property
    def tgd_constraint(self) -> str:
        if self.definition.answer_type == "choice" and self.definition.format_instruction is None:
            return AT.choice_constraint(self._n_choices())
        return self._format

    def update_constraints(self, example: Example) -> list[str]:
        """Per example: a ``choice`` question's constraint names its own letters."""
        if self.definition.answer_type == "choice" and self.definition.format_instruction is None:
            return [AT.choice_constraint(self._n_choices(example))]
        return [self._format] if self._format else []

    def format_question(self, example: Example) -> str:
        """``choice`` without its own format line: simple-evals' template (TextGrad's, byte for byte for 4
        options); otherwise the question, a blank line and the format instruction."""
        if self.definition.answer_type == "choice" and self.definition.format_instruction is None:
            return f"{AT.choice_instruction(self._n_choices(example))}\n\n{example.question}"
        return f"{example.question}\n\n{self._format}" if self._format else example.question

    # -- answers ------------------------------------------------------------------
    def extract_answer(self, response: str, example: Example | None = None) -> str | None:
        """The answer under the type's rule and ``self.scoring`` (``answer_types``)."""
        d = self.definition
        choices = example.choices if example is not None else None
        return AT.extract(d.answer_type, response, lenient=self.scoring == "lenient", choices=choices,
                          pattern=d.pattern)

    def score(self, response: str, example: Example) -> float:
        return self.score_item(response, example).score

    def score_item(self, response: str, example: Example) -> ScoreResult:
        d = self.definition
        if d.answer_type == "python":
            return self._user_score(response, example)
        got = self.extract_answer(response, example)
        if got is None:
            return ScoreResult(0.0)
        if d.answer_type == "number":
            ok = numbers_equal(got, example.answer, tolerance=d.tolerance, relative_tolerance=d.relative_tolerance)
        elif d.answer_type == "choice":
            ok = got == example.answer
        else:
            ok = (AT.normalize_text(got, case_sensitive=d.case_sensitive)
                  == AT.normalize_text(example.answer, case_sensitive=d.case_sensitive))
        return ScoreResult(float(ok))

    def _user_score(self, response: str, example: Example) -> ScoreResult:
        d = self.definition
        try:
            out = d.scorer(response, example)
            feedback = None
            if isinstance(out, tuple):
                if len(out) != 2:
                    raise ValueError(f"returned a tuple of {len(out)}; return a score or (score, feedback)")
                out, feedback = out
            if feedback is not None and not isinstance(feedback, str):
                raise ValueError(f"returned feedback {feedback!r}; feedback must be text or None")
            if isinstance(out, bool):
                out = float(out)
            if not isinstance(out, (int, float)) or math.isnan(out) or not 0.0 <= out <= 1.0:
                raise ValueError(f"returned {out!r}; a score must be a number in [0, 1]")
            return ScoreResult(float(out), feedback)
        except Exception as e:  # noqa: BLE001 - the user's scorer: this item scores 0, the run goes on
            error = f"scorer {d.scorer_name} raised {type(e).__name__}: {e}"
            with self._lock:
                self._scorer_errors.setdefault((example.id, short_hash(response)), error)
            return ScoreResult(0.0, None, error)

    # -- records ------------------------------------------------------------------
    def data_identity(self) -> dict[str, Any]:
        """Each source's identity: a file's sha256, a Hub dataset's revision, the rows' hash."""
        self.splits()
        return dict(self._fingerprints)

    def describe(self) -> dict[str, Any]:
        """Provenance for results.json: definition, data, seed, split rule, sizes, skipped rows, identity."""
        s = self.splits()
        d = self.definition
        data = self.data.describe() if self.data is not None else {"origin": "splits"}
        if self.schema is not None and data.get("origin") == "file":  # a local copy in a Hub dataset's schema
            data.update(dataset=self.schema.path, config=self.schema.name)
        out = {
            "name": self.name,
            "scoring": self.scoring,
            "answer_type": d.answer_type,
            **data,
            "definition": d.describe(),
            "seed": self.seed,
            "strict": self.strict,
            "split_rule": FILE_SPLIT_RULE if d.splits is not None else SEEDED_SPLIT_RULE,
            "rows": self._rows,
            "sizes": {"train": len(s.train), "val": len(s.val), "test": len(s.test)},
            "skipped": len(s.skipped),
            "skipped_rows": [dict(x) for x in s.skipped[:50]],
            "identity": self.identity(),
        }
        if d.path is not None:
            out["task_file"] = str(d.path)
        if d.shuffle_choices:
            out["option_order"] = 'shuffled per row with random.Random(f"{seed}:{row}"); meta["permutation"]'
        if d.answer_type == "python":
            errors = list(self._scorer_errors.values())
            out["scorer_errors"] = {"count": len(errors), "first": errors[0] if errors else None}
        return out
