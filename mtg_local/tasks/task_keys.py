"""The keys of a task file and how each is read: ``Validator`` checks one key at a time.

``task_file.TaskDefinition`` uses it; every problem is one ``TaskDefinitionError`` naming
the file and the key (docs/tasks.md "Your own task" lists the keys).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import re
import string
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtg_local.tasks.errors import TaskDefinitionError

#: Answer types of a declarative task file (``mtg_local.tasks.answer_types``).
ANSWER_TYPES = ("exact", "number", "choice", "regex", "python")
#: Suffixes that make a ``--task`` value a task file rather than a registered name.
TASK_FILE_SUFFIXES = (".yaml", ".yml")
SPLIT_NAMES = ("train", "val", "test")
#: Task names: what run dirs, report columns and multi-task example ids ("name/id") can hold.
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")

COMMON_KEYS = {"name", "description", "aliases"}
FACTORY_KEYS = COMMON_KEYS | {"python", "args", "generated"}
TEXT_KEYS = ("format_instruction", "role", "initial_loss_prompt", "inference_template")
DECLARATIVE_KEYS = COMMON_KEYS | {
    "data", "splits", "question", "answer", "answer_type", "choices", "num_choices", "shuffle_choices",
    "pattern", "scorer", "tolerance", "relative_tolerance", "case_sensitive", "meta_fields", *TEXT_KEYS,
}
#: keys that only some answer types read (a key another type ignores is an error, not a no-op)
TYPE_KEYS = {
    "choices": ("choice",), "num_choices": ("choice",), "shuffle_choices": ("choice",),
    "pattern": ("regex", "python"), "scorer": ("python",),
    "tolerance": ("number",), "relative_tolerance": ("number",), "case_sensitive": ("exact", "regex"),
}
DATA_KEYS = {"file", "path", "name", "split", "revision", "gated", "json_field"}


def is_task_file(spec: str) -> bool:
    """Whether a ``--task`` value names a task file (by its suffix) rather than a registered task."""
    return str(spec).lower().endswith(TASK_FILE_SUFFIXES)


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where rows come from: a local file, a Hub dataset, or rows given from Python.

    Attributes:
        kind: "file", "hub" or "rows".
        file: the local file (absolute) for "file".
        path / name / splits / revision: the Hub dataset id, config, split(s) read in
            order, revision (None: the default branch) for "hub".
        rows: the rows for "rows".
        gated: the Hub dataset needs a token and accepted terms (a better message).
        json_field: a ``.json`` file holding one object: the key of its list of rows.
    """

    kind: str
    file: Path | None = None
    path: str | None = None
    name: str | None = None
    splits: tuple[str, ...] = ("train",)
    revision: str | None = None
    rows: tuple[dict[str, Any], ...] = ()
    gated: bool = False
    json_field: str | None = None

    def describe(self) -> dict[str, Any]:
        if self.kind == "file":
            return {"origin": "file", "data_file": str(self.file)}
        if self.kind == "hub":
            return {"origin": "hub", "dataset": self.path, "config": self.name, "hub_splits": list(self.splits),
                    "revision": self.revision, "data_file": None}
        return {"origin": "rows", "rows": len(self.rows)}


class Validator:
    """Reads one key at a time; the first problem raises ``TaskDefinitionError`` naming the key."""

    def __init__(self, raw: dict[str, Any], where: str, base_dir: Path) -> None:
        self.raw, self.where, self.base_dir = raw, where, base_dir

    def fail(self, key: str | None, problem: str) -> None:
        raise TaskDefinitionError(self.where, key, problem)

    def only(self, allowed: set[str], what: str) -> None:
        for key in self.raw:
            if key not in allowed:
                self.fail(str(key), f"unknown key; {what} {', '.join(sorted(allowed))}")

    def name(self) -> str:
        name = self.required_text("name")
        if not NAME_PATTERN.fullmatch(name) or name.lower().endswith(TASK_FILE_SUFFIXES):
            self.fail("name", f"{name!r} must be letters, digits, '_', '.' or '-', starting with a letter "
                              f"(it names run dirs and report columns)")
        return name

    def required_text(self, key: str) -> str:
        if key not in self.raw or self.raw[key] is None:
            self.fail(key, "missing (required)")
        value = self.raw[key]
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def optional_text(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is not None and not isinstance(value, str):
            self.fail(key, f"must be a string, got {value!r}")
        return value

    def names(self, key: str, pattern: re.Pattern[str] | None = NAME_PATTERN) -> tuple[str, ...]:
        value = self.raw.get(key) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
            self.fail(key, f"must be a list of strings, got {value!r}")
        if pattern is not None and not all(pattern.fullmatch(x) for x in value):
            self.fail(key, f"names must be letters, digits, '_', '.' or '-', got {value!r}")
        return tuple(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {value!r}")
        return value

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self.raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
            self.fail(key, f"must be an integer from {low} to {high}, got {value!r}")
        return value

    def number(self, key: str) -> float:
        value = self.raw.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            self.fail(key, f"must be a number >= 0, got {value!r}")
        return float(value)

    def choices(self) -> str | tuple[str, ...]:
        value = self.raw.get("choices")
        if value is None:
            self.fail("choices", "missing (answer_type choice needs the options: a field holding a list, "
                                 "or a list of fields such as CSV columns)")
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and 2 <= len(value) <= 26 and all(isinstance(x, str) and x for x in value):
            if len(set(value)) != len(value):
                self.fail("choices", f"names a field twice: {value}")
            return tuple(value)
        self.fail("choices", f"must be a field name or a list of 2 to 26 field names, got {value!r}")
        raise AssertionError  # unreachable

    def pattern(self) -> re.Pattern[str]:
        text = self.required_text("pattern")
        try:
            compiled = re.compile(text)
        except re.error as e:
            self.fail("pattern", f"is not a valid regular expression ({e})")
        if compiled.groups < 1:
            self.fail("pattern", "needs a group: group 1 is the answer compared with the gold one, e.g. 'Answer: (\\w+)'")
        return compiled

    def callable(self, key: str) -> tuple[Callable[..., Any], Path | None]:
        """``module:attr`` (module a file beside the task file, or importable) or a callable from Python."""
        value = self.raw.get(key)
        if value is None:
            self.fail(key, "missing (required)")
        if callable(value):
            src = getattr(sys.modules.get(getattr(value, "__module__", ""), None), "__file__", None)
            return value, Path(src) if src else None
        if not isinstance(value, str) or value.count(":") != 1 or not all(value.split(":")):
            self.fail(key, f"must be 'module:function' (a module beside the task file or an importable one), "
                           f"got {value!r}")
        module_name, attr = value.split(":")
        try:
            module, src = import_module_near(module_name, self.base_dir)
        except Exception as e:  # noqa: BLE001 - any import failure of user code is the user's to fix
            self.fail(key, f"cannot import module {module_name!r} ({type(e).__name__}: {e})")
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        if obj is None or not callable(obj):
            self.fail(key, f"module {module_name!r} has no callable {attr!r}")
        return obj, src

    def data_and_splits(self) -> dict[str, Any]:
        data = self.raw.get("data")
        splits = self.raw.get("splits")
        out: dict[str, Any] = {"data": None, "splits": None}
        if data is not None:
            out["data"] = data if isinstance(data, DataSpec) else self._data_spec("data", data, hub_split=None)
        if splits is not None:
            if not isinstance(splits, dict):
                self.fail("splits", f"must be a mapping with train, val and test, got {splits!r}")
            for s in splits:
                if s not in SPLIT_NAMES:
                    self.fail(f"splits.{s}", "unknown split; the splits are train, val and test")
            hub = out["data"] if out["data"] is not None and out["data"].kind == "hub" else None
            out["splits"] = {}
            for s in SPLIT_NAMES:
                if splits.get(s) is None:
                    self.fail(f"splits.{s}", "missing: give all three splits (or no 'splits' for a seeded split "
                                             "of 'data')")
                out["splits"][s] = self._data_spec(f"splits.{s}", splits[s], hub_split=hub)
        elif out["data"] is None:
            self.fail("data", "missing: give 'data' (a file or a Hub dataset) or 'splits' with train, val and test")
        return out

    def _data_spec(self, key: str, value: Any, *, hub_split: DataSpec | None) -> DataSpec:
        if isinstance(value, str):
            value = {"split": value} if hub_split is not None else {"file": value}
        if not isinstance(value, dict):
            self.fail(key, f"must be a file path or a mapping (file: PATH, or path/name/split of a Hub dataset), "
                           f"got {value!r}")
        unknown = set(value) - DATA_KEYS
        if unknown:
            self.fail(f"{key}.{sorted(unknown)[0]}", f"unknown key; known: {', '.join(sorted(DATA_KEYS))}")
        if hub_split is not None and "file" not in value and "path" not in value:
            value = {**{"path": hub_split.path, "name": hub_split.name, "revision": hub_split.revision,
                        "gated": hub_split.gated}, **value}
        if ("file" in value) == ("path" in value):
            self.fail(key, "give either 'file' (a local file) or 'path' (a Hub dataset id)")
        if "file" in value:
            from mtg_local.tasks.loading import FILE_BUILDERS

            f = value["file"]
            if not isinstance(f, str) or not f:
                self.fail(f"{key}.file", f"must be a path, got {f!r}")
            p = (self.base_dir / Path(f).expanduser()).resolve()
            if p.suffix.lower() not in FILE_BUILDERS:
                self.fail(key, f"{f}: unsupported format {p.suffix or '(no suffix)'!r}; use one of "
                               f"{', '.join(sorted(FILE_BUILDERS))}")
            if not p.is_file():
                self.fail(key, f"data file {p} does not exist")
            jf = value.get("json_field")
            return DataSpec("file", file=p, json_field=str(jf) if jf else None)
        split = value.get("split", "train")
        split = [split] if isinstance(split, str) else split
        if not isinstance(split, list) or not split or not all(isinstance(s, str) and s for s in split):
            self.fail(f"{key}.split", f"must be a split name or a list of them, got {value.get('split')!r}")
        for k in ("path", "name", "revision"):
            if value.get(k) is not None and not isinstance(value[k], str):
                self.fail(f"{key}.{k}", f"must be a string, got {value[k]!r}")
        return DataSpec("hub", path=value["path"], name=value.get("name"), splits=tuple(split),
                        revision=value.get("revision"), gated=bool(value.get("gated", False)))


def import_module_near(module_name: str, base_dir: Path | None) -> tuple[Any, Path | None]:
    """Imports ``module_name`` from a ``.py`` file under ``base_dir`` if there is one, else normally.

    ``a.b`` looks for ``base_dir/a/b.py``; a name ending in ``.py`` is a path relative to
    ``base_dir``. A module loaded from a file is cached under a name derived from its path,
    so two task files' ``scorer.py`` never clash.

    Returns:
        (module, its source file or None).
    """
    candidates = []
    if base_dir is not None:
        if module_name.endswith(".py"):
            candidates.append(base_dir / module_name)
        else:
            candidates.append(base_dir / (module_name.replace(".", "/") + ".py"))
    for path in candidates:
        path = path.resolve()
        if path.is_file():
            key = f"mtg_task_module_{sha256_hex(str(path))[:12]}_{path.stem}"
            if key in sys.modules:
                return sys.modules[key], path
            spec = importlib.util.spec_from_file_location(key, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module
            sys.path.insert(0, str(path.parent))  # its own imports of neighbouring modules
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(key, None)
                raise
            finally:
                sys.path.remove(str(path.parent))
            return module, path
    if module_name.endswith(".py"):
        raise ModuleNotFoundError(f"no file {module_name} beside the task file")
    module = importlib.import_module(module_name)
    src = getattr(module, "__file__", None)
    return module, Path(src) if src else None


def template_fields(template: str) -> list[str]:
    """The field names a ``{field}`` template uses (``ValueError`` on a malformed template)."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
