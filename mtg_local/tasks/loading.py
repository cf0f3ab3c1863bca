"""Loading task rows through ``datasets`` (Hub or a local file) and splitting them.

Every task reads its rows with ``datasets.load_dataset``: from the Hugging Face
Hub (honouring ``HF_HOME``, ``HF_TOKEN``, ``HF_DATASETS_OFFLINE`` /
``HF_HUB_OFFLINE``) or, given ``data_file``, from a local JSON / JSONL / CSV /
Parquet file through the matching packaged builder -- the same code path, so
the fixtures in the tests exercise the real loader.

Hub failures are turned into one ``TaskDataError`` naming the dataset, the
config and the two ways out (log in / accept the terms for gated sets, or a
local file via ``--data-file``). Bad rows are either skipped and recorded
(``{"row", "reason"}``, with a logged warning) or, with ``strict=True``,
stop the load with the row number and the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mtg_local.tasks.errors import TaskDataError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: local file suffix -> ``datasets`` packaged builder
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}

GATED_HINT = (
    "set HF_TOKEN / huggingface-cli login and accept the dataset terms at "
    "https://huggingface.co/datasets/{dataset}"
)
DATA_FILE_HINT = (
    "To use a local copy in the dataset's schema instead, pass --data-file FILE "
    "(get_task(..., data_file=FILE); formats in docs/tasks.md)."
)


class BadRow(ValueError):
    """Raised by a row parser: the row cannot become an example (message = reason)."""


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where a task's rows come from.

    Attributes:
        dataset: Hub dataset id, e.g. "cais/mmlu" (recorded even for local files,
            as the schema the file follows).
        config: Hub config name, e.g. "machine_learning".
        hub_splits: Hub splits to read, concatenated in this order.
        data_file: a local file to read instead of the Hub (None: the Hub).
        gated: the Hub dataset needs an accepted licence and a token.
        json_field: for a ``.json`` file holding one object, the key of its
            list of rows (BBH / BIG-bench: "examples").
        revision: the Hub revision to read (None: the default branch).
        owner: how messages name the task that reads it (a task file), or None.
    """

    dataset: str
    config: str | None
    hub_splits: tuple[str, ...]
    data_file: str | None = None
    gated: bool = False
    json_field: str | None = None
    revision: str | None = None
    owner: str | None = None

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ValueError("dataset must be a non-empty Hub id")
        if not self.hub_splits:
            raise ValueError(f"hub_splits must name at least one split of {self.dataset}")
        if self.data_file is not None:
            suffix = Path(self.data_file).suffix.lower()
            if suffix not in FILE_BUILDERS:
                raise TaskDataError(
                    f"data file {self.data_file}: unsupported format {suffix or '(no suffix)'!r}; "
                    f"use one of {', '.join(sorted(FILE_BUILDERS))}"
                )

    @property
    def label(self) -> str:
        """How messages name this source."""
        if self.owner is not None:
            what = f"data file {self.data_file}" if self.data_file is not None else f"dataset {self.dataset!r}"
            return f"{self.owner}: {what}" + (f" config {self.config!r}" if self.data_file is None else "")
        if self.data_file is not None:
            return f"data file {self.data_file} ({self.dataset} schema)"
        return f"dataset {self.dataset!r} config {self.config!r}"

    def describe(self) -> dict[str, Any]:
        return {
            "origin": "file" if self.data_file is not None else "hub",
            "dataset": self.dataset,
            "config": self.config,
            "hub_splits": list(self.hub_splits) if self.data_file is None else None,
            "data_file": self.data_file,
            **({"revision": self.revision} if self.revision else {}),
        }


def load_rows(source: DataSource, *, info: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Reads every row of ``source``.

    ``info``, if given, receives ``"resolved"``: the revision of a Hub dataset as
    ``datasets`` resolved it (the hash its cache is keyed by: the commit read), or None.

    Returns:
        ``(rows, origins)``: the rows in order (Hub splits concatenated in
        ``source.hub_splits`` order; a file in file order) and, per row, the
        split it came from ("file" for a local file).

    Raises:
        TaskDataError: the dataset or file cannot be read (message names it and
            says how to fix it).
    """
    import datasets  # heavy import, only when data is actually loaded

    if source.data_file is not None:
        if _holds_no_rows(Path(source.data_file)):  # datasets stumbles on these: say "no rows" instead
            return [], []
        ds = _load_file(datasets, source)
        rows = ds.to_list()
        return rows, ["file"] * len(rows)
    try:
        kwargs = {"revision": source.revision} if source.revision else {}
        dd = datasets.load_dataset(source.dataset, source.config, **kwargs)
    except Exception as exc:  # translated below; anything unknown is re-raised
        raise _hub_error(exc, source) from exc
    present = [s for s in source.hub_splits if s in dd]
    if not present:
        raise TaskDataError(
            f"{source.label} has none of the splits {list(source.hub_splits)} (it has {sorted(dd)})"
        )
    rows, origins = [], []
    for split in present:
        part = dd[split].to_list()
        rows.extend(part)
        origins.extend([split] * len(part))
    if info is not None:
        info["resolved"] = resolved_revision(dd[present[0]])
    return rows, origins


def resolved_revision(ds: Any) -> str | None:
    """The revision hash a loaded Hub dataset's cache is keyed by (the commit read), or None.

    ``datasets`` keeps a Hub dataset under ``.../<config>/<version>/<hash>/``, the hash
    being the commit it resolved; a dataset held in memory has no cache files.
    """
    try:
        files = ds.cache_files
    except AttributeError:
        return None
    if not files:
        return None
    name = Path(files[0]["filename"]).parent.name
    return name if re.fullmatch(r"[0-9a-f]{7,64}", name) else None


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (a data file's identity, however its path was written)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _holds_no_rows(path: Path) -> bool:
    """An empty file, or a CSV with its header line only."""
    if not path.is_file() or path.suffix.lower() not in (".json", ".jsonl", ".csv") or path.stat().st_size > 1 << 16:
        return False
    lines = [ln for ln in path.read_bytes().splitlines() if ln.strip()]
    return not lines or (path.suffix.lower() == ".csv" and len(lines) == 1)


def _load_file(datasets: Any, source: DataSource) -> Any:
    path = Path(source.data_file)
    if not path.is_file():
        raise TaskDataError(f"data file {path} does not exist (or is not a file)")
    builder = FILE_BUILDERS[path.suffix.lower()]
    kwargs: dict[str, Any] = {}
    data_path = path
    if path.suffix.lower() == ".json":
        field, data_path = _json_layout(path, source.json_field)
        if field is not None:
            kwargs["field"] = field
    shown = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a local file of a few rows: no "Generating train split" bar on stderr
    try:
        return datasets.load_dataset(builder, data_files=str(data_path), split="train", **kwargs)
    except (datasets.exceptions.DatasetsError, ValueError, OSError) as exc:
        cause = exc.__cause__ or exc.__context__
        detail = f"{exc}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
        raise TaskDataError(f"{source.label}: cannot be read as {builder}: {detail}") from exc
    finally:
        if shown:
            datasets.enable_progress_bars()
        if data_path != path:  # the normalised temporary copy; the dataset lives in the Arrow cache
            shutil.rmtree(data_path.parent, ignore_errors=True)


def _json_layout(path: Path, field: str | None) -> tuple[str | None, Path]:
    """How to read a ``.json`` file: ``(field, path_to_load)``.

    A JSON object is read through ``field`` (e.g. BBH's ``{"examples": [...]}``);
    a list of records or JSON lines is read as is. If a column mixes strings and
    lists (BIG-bench ``target``), which Arrow cannot hold, the rows are copied to a
    temporary JSON-lines file with scalars wrapped in lists, then loaded.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, path  # JSON lines in a .json file: the builder reads them
    if isinstance(data, list):
        return None, path
    if not isinstance(data, dict) or field is None or not isinstance(data.get(field), list):
        expected = f"a JSON object with a list under {field!r} (or " if field else "("
        raise TaskDataError(
            f"data file {path}: expected {expected}a list of records / JSON lines), got {type(data).__name__}"
            + (f" with keys {sorted(data)[:8]}" if isinstance(data, dict) else "")
        )
    records = data[field]
    mixed = {
        key
        for key in {k for r in records if isinstance(r, dict) for k in r}
        if len({isinstance(r.get(key), list) for r in records if isinstance(r, dict) and r.get(key) is not None}) > 1
    }
    if not mixed:
        return field, path
    tmp = Path(tempfile.mkdtemp(prefix="mtg-task-")) / (path.stem + ".jsonl")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            if isinstance(r, dict):
                r = {k: ([v] if k in mixed and v is not None and not isinstance(v, list) else v) for k, v in r.items()}
            f.write(json.dumps(r) + "\n")
    return None, tmp


def _hub_error(exc: Exception, source: DataSource) -> Exception:
    """The ``TaskDataError`` for a failed Hub load (or ``exc`` itself if unknown)."""
    from datasets.exceptions import DatasetNotFoundError

    try:
        from huggingface_hub.errors import GatedRepoError
    except ImportError:  # pragma: no cover - very old huggingface_hub
        GatedRepoError = ()  # type: ignore[assignment]

    text = str(exc)
    chain = [exc, exc.__cause__, exc.__context__]
    is_gated = any(isinstance(e, GatedRepoError) for e in chain if e is not None) or "gated" in text.lower()
    if is_gated or (source.gated and isinstance(exc, (DatasetNotFoundError, PermissionError))):
        return TaskDataError(
            f"{source.label} is gated and could not be accessed ({text}): "
            f"{GATED_HINT.format(dataset=source.dataset)}. {DATA_FILE_HINT}"
        )
    if isinstance(exc, (ConnectionError, DatasetNotFoundError, FileNotFoundError, TimeoutError)):
        extra = f"It is gated: {GATED_HINT.format(dataset=source.dataset)}. " if source.gated else ""
        return TaskDataError(
            f"cannot load {source.label} from the Hugging Face Hub ({type(exc).__name__}: {text}). "
            f"Offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) or without network it must already be "
            f"in the HF_HOME cache. {extra}{DATA_FILE_HINT}"
        )
    return exc


def parse_rows(
    rows: Sequence[dict[str, Any]],
    parse: Callable[[int, dict[str, Any]], T],
    *,
    label: str,
    strict: bool,
) -> tuple[list[tuple[int, T]], list[dict[str, Any]]]:
    """Applies ``parse(row_number, row)`` to every row.

    Args:
        rows: the loaded rows, in order; row numbers are 0-based indices here.
        parse: returns the parsed row or raises ``BadRow(reason)``.
        label: names the source in messages.
        strict: stop at the first bad row instead of skipping it.

    Returns:
        ``(parsed, skipped)``: ``(row_number, value)`` for the good rows in order,
        and ``{"row": n, "reason": str}`` for the skipped ones.

    Raises:
        TaskDataError: ``strict`` and a row is bad (names the row and reason).
    """
    parsed: list[tuple[int, T]] = []
    skipped: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        try:
            parsed.append((i, parse(i, row)))
        except BadRow as exc:
            if strict:
                raise TaskDataError(
                    f"{label}: row {i}: {exc} (rows are numbered from 0 in load order; "
                    f"without strict=True bad rows are skipped and counted)"
                ) from None
            skipped.append({"row": i, "reason": str(exc)})
    if skipped:
        shown = "; ".join(f"row {s['row']}: {s['reason']}" for s in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        logger.warning("%s: skipped %d bad row(s): %s%s", label, len(skipped), shown, more)
    return parsed, skipped


def check_columns(rows: Sequence[dict[str, Any]], required: Sequence[str], label: str) -> None:
    """Raises ``TaskDataError`` if the loaded rows lack a required column (a schema error, not a bad row)."""
    if not rows:
        raise TaskDataError(f"{label}: has no rows")
    missing = [c for c in required if c not in rows[0]]
    if missing:
        raise TaskDataError(
            f"{label}: missing column(s) {missing}; it has {sorted(rows[0])}. "
            f"Expected the columns {list(required)} (see docs/tasks.md)"
        )


def text_field(row: dict[str, Any], field: str, *, strip: bool = True) -> str:
    """A required non-empty text field of ``row`` (numbers are accepted as text), stripped unless ``strip=False``.

    ``strip=False`` keeps the text as the dataset has it, where TextGrad's loader
    does (so the question the model reads is TextGrad's); it must still hold
    more than whitespace.

    Raises:
        BadRow: the field is missing, null, not text or empty.
    """
    if field not in row or row[field] is None:
        raise BadRow(f"missing field {field!r}")
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRow(f"field {field!r} must be text, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise BadRow(f"empty field {field!r}")
    return text.strip() if strip else text


def one_to_three_split(valid_rows: Sequence[int], n_rows: int, seed: int) -> tuple[list[int], list[int], list[int]]:
    """The paper's train:test = 1:3 split, with validation carved from train.

    All ``n_rows`` row numbers are shuffled with ``random.Random(seed)`` (so a
    skipped row does not move the others in the order), the valid ones kept in
    that order; the first ``(n + 2) // 4`` of the ``n`` valid rows are the
    train part (a quarter, rounded to nearest), the rest the test split. The
    train part's first ceil(half) is train, the remaining floor(half) is val.

    Returns:
        ``(train_rows, val_rows, test_rows)``, each in shuffled order.
    """
    order = list(range(n_rows))
    random.Random(seed).shuffle(order)
    keep = set(valid_rows)
    shuffled = [r for r in order if r in keep]
    n_train_part = (len(shuffled) + 2) // 4
    n_val = n_train_part // 2
    n_train = n_train_part - n_val
    return shuffled[:n_train], shuffled[n_train:n_train_part], shuffled[n_train_part:]
