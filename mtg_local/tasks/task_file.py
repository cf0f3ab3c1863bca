"""Task files: a task defined by a YAML file (or the same keys from Python), validated whole.

Modelled on lm-evaluation-harness's YAML tasks (docs/tasks.md "Your own task" lists every
key). ``TaskDefinition.load(path)`` reads and checks a file; ``TaskDefinition.define(...)``
takes the same keys from Python, with ``rows=`` (a list of dicts) for data and a callable
for ``scorer``. Every problem found here is one ``TaskDefinitionError`` naming the file and
the key (``task_keys.Validator``), raised before any data is read or engine started;
problems that need the data (a field it lacks, an empty split) are found by ``DefinedTask``
when it loads, before any engine starts too.

Relative paths in a task file (data files, a scorer's or a factory's module) are relative
to the task file's folder.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtg_local.tasks.errors import TaskDefinitionError
from mtg_local.tasks.task_keys import (  # noqa: F401 - also re-exported: what a task file is made of
    ANSWER_TYPES, DECLARATIVE_KEYS, FACTORY_KEYS, NAME_PATTERN, SPLIT_NAMES, TASK_FILE_SUFFIXES, TEXT_KEYS,
    TYPE_KEYS, DataSpec, Validator, canonical, import_module_near, is_task_file, sha256_hex, template_fields,
)


@dataclasses.dataclass(frozen=True)
class TaskDefinition:
    """A validated task definition (one task file, or the same keys from Python).

    ``raw`` holds the keys as given; the typed fields are what the loader reads.
    ``factory`` is set for a task built by Python (``python: module:callable``), in
    which case the declarative fields are unused.
    """

    name: str
    where: str  # "task file /abs/path.yaml" or "task 'name' (Python)": how messages name it
    raw: dict[str, Any]
    base_dir: Path | None = None
    path: Path | None = None
    definition_hash: str = ""
    aliases: tuple[str, ...] = ()
    factory: Callable[..., Any] | None = None
    factory_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    generated: bool = False
    answer_type: str = ""
    question: str = ""
    answer: str = ""
    data: DataSpec | None = None
    splits: dict[str, DataSpec] | None = None
    choices: str | tuple[str, ...] | None = None
    num_choices: int | None = None
    shuffle_choices: bool = False
    pattern: re.Pattern[str] | None = None
    scorer: Callable[..., Any] | None = None
    scorer_name: str = ""
    tolerance: float = 0.0
    relative_tolerance: float = 0.0
    case_sensitive: bool = False
    meta_fields: tuple[str, ...] = ()
    format_instruction: str | None = None
    role: str | None = None
    initial_loss_prompt: str | None = None
    inference_template: str | None = None

    # -- construction -------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> TaskDefinition:
        """Reads and validates a task file.

        Raises:
            TaskDefinitionError: the file is missing, not YAML, or a key is wrong.
        """
        import yaml

        p = Path(path).expanduser().resolve()
        where = f"task file {p}"
        if not p.is_file():
            raise TaskDefinitionError(where, None, "no such file")
        text = p.read_bytes()
        try:
            raw = yaml.safe_load(text.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise TaskDefinitionError(where, None, f"not valid YAML ({type(e).__name__}: {e})") from e
        if not isinstance(raw, dict):
            raise TaskDefinitionError(where, None, f"must be a YAML mapping of keys, got {type(raw).__name__}")
        return cls._from_mapping(raw, where=where, base_dir=p.parent, path=p, text=text)

    @classmethod
    def define(cls, **keys: Any) -> TaskDefinition:
        """A definition from Python: the task file's keys, plus ``rows=`` (a list of dicts) as data
        and a callable as ``scorer`` (or ``python``).

        Raises:
            TaskDefinitionError: a key is missing or wrong (the message names it).
        """
        rows = keys.pop("rows", None)
        where = f"task {keys.get('name')!r} (Python)"
        if rows is not None:
            if keys.get("data") is not None:
                raise TaskDefinitionError(where, "rows", "give rows= or data=, not both")
            if not isinstance(rows, (list, tuple)) or not all(isinstance(r, dict) for r in rows):
                raise TaskDefinitionError(where, "rows", "must be a list of dicts (one per question)")
            keys["data"] = DataSpec("rows", rows=tuple(dict(r) for r in rows))
        return cls._from_mapping(keys, where=where, base_dir=Path.cwd(), path=None, text=None)

    @classmethod
    def _from_mapping(cls, raw: dict[str, Any], *, where: str, base_dir: Path, path: Path | None,
                      text: bytes | None) -> TaskDefinition:
        v = Validator(raw, where, base_dir)
        name = v.name()
        fields: dict[str, Any] = {"name": name, "where": where, "raw": dict(raw), "base_dir": base_dir, "path": path,
                                  "aliases": v.names("aliases")}
        if "python" in raw:
            v.only(FACTORY_KEYS, "a task built by Python (key 'python') takes only")
            factory, factory_src = v.callable("python")
            args = raw.get("args") or {}
            if not isinstance(args, dict):
                v.fail("args", f"must be a mapping of keyword arguments, got {args!r}")
            fields.update(factory=factory, factory_args=dict(args), generated=v.boolean("generated", False))
            sources = [factory_src]
        else:
            v.only(DECLARATIVE_KEYS, "known keys:")
            answer_type = v.required_text("answer_type")
            if answer_type not in ANSWER_TYPES:
                v.fail("answer_type", f"unknown answer type {answer_type!r}; known: {', '.join(ANSWER_TYPES)}")
            for key, types in TYPE_KEYS.items():
                if key in raw and answer_type not in types:
                    v.fail(key, f"is read only by answer_type {' / '.join(types)}, not {answer_type}")
            question = v.required_text("question")
            if "{" in question:
                try:
                    names = template_fields(question)
                    if not names or any(not f or f.isdigit() or "." in f or "[" in f for f in names):
                        raise ValueError("a template's fields are field names in braces, e.g. '{question}'")
                except ValueError as e:
                    v.fail("question", f"is not a valid template ({e}); a literal brace is written '{{{{' or '}}}}'")
            fields.update(answer_type=answer_type, question=question,
                          answer=v.required_text("answer"), **v.data_and_splits(),
                          meta_fields=v.names("meta_fields", pattern=None),
                          **{k: v.optional_text(k) for k in TEXT_KEYS})
            sources = []
            if answer_type == "choice":
                fields.update(choices=v.choices(), num_choices=v.integer("num_choices", 2, 26),
                              shuffle_choices=v.boolean("shuffle_choices", False))
            if answer_type in ("regex", "python") and ("pattern" in raw or answer_type == "regex"):
                fields["pattern"] = v.pattern()
            if answer_type == "python":
                scorer, scorer_src = v.callable("scorer")
                fields.update(scorer=scorer, scorer_name=_callable_name(raw["scorer"], scorer))
                sources.append(scorer_src)
            if answer_type == "number":
                fields.update(tolerance=v.number("tolerance"), relative_tolerance=v.number("relative_tolerance"))
            if answer_type in ("exact", "regex"):
                fields["case_sensitive"] = v.boolean("case_sensitive", False)
        fields["definition_hash"] = _definition_hash(raw, text, sources)
        return cls(**fields)

    # -- views ------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The definition as results.json records it (callables by name, rows counted)."""
        d = {k: v for k, v in self.raw.items() if k not in ("rows", "scorer", "python", "data")}
        if self.factory is not None:
            d["python"] = _callable_name(self.raw.get("python"), self.factory)
        if self.scorer is not None:
            d["scorer"] = self.scorer_name
        if self.data is not None:
            d["data"] = self.data.describe()
        if self.splits is not None:
            d["splits"] = {s: spec.describe() for s, spec in self.splits.items()}
        return json.loads(canonical(d))


def _callable_name(spec: Any, fn: Any) -> str:
    if isinstance(spec, str):
        return spec
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def _definition_hash(raw: dict[str, Any], text: bytes | None, sources: list[Path | None]) -> str:
    """sha256 of the task file's bytes (or, from Python, its keys), plus the modules it runs."""
    if text is not None:
        parts = [sha256_hex(text)]
    else:
        keys = {k: (_callable_name(None, v) if callable(v) else v) for k, v in raw.items() if k != "data"}
        parts = [sha256_hex(canonical(keys))]
    parts += [sha256_hex(s.read_bytes()) for s in sources if s is not None and s.is_file()]
    return sha256_hex("\n".join(parts))


