"""transformers engine: batched ``model.generate`` with left padding.

The portable fallback (no vLLM needed) and the reference the vLLM engine is
tested against: prompts are rendered by the same code (``engines.rendering``),
so both engines see identical token ids.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engines.base import Capabilities, Engine, GenRequest, GenResult, context_finish_reason, context_room
from engines.bundled import model_identity, resolve_model
from engines.registry import config_from_options
from engines.rendering import cut_at_stop, render_token_ids, resolve_dtype

_SEED_NOTE = (
    "HF: one generate() per group of requests sharing (temperature, top_p, seed); "
    "torch.manual_seed(seed) is set before each group, so a request's sample is "
    "reproducible given the same group composition. Greedy requests form one group."
)


@dataclasses.dataclass(frozen=True)
class HFConfig:
    """Settings of an ``HFEngine``.

    Attributes:
        model: "bundled", a local HF folder, or a hub id.
        dtype: "auto" (CPU: bfloat16 where native, else float32; GPU:
            bfloat16), or "bfloat16"/"float16"/"float32".
        device: "auto" (cuda if available), "cpu" or "cuda[:N]".
        max_model_len: context length (default: the model's
            ``max_position_embeddings``).
        max_batch_size: most rows per ``generate`` call (bounds memory).
        trust_remote_code: allow model code from the model folder.
    """

    model: str
    dtype: str = "auto"
    device: str = "auto"
    max_model_len: int | None = None
    max_batch_size: int = 64
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu") or self.device.startswith("cuda")
        ):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        for name in ("max_model_len", "max_batch_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


class HFEngine(Engine):
    """transformers backend with the batch contract.

    Requests are grouped by sampling settings (``generate`` takes one
    generation config): greedy requests (temperature 0) form one group; the
    others group by (temperature, top_p, seed). Each group runs in chunks of
    ``max_batch_size`` with left padding, ``max_new_tokens`` = the group's
    largest ``max_tokens``; each row is then cut to its own ``max_tokens``
    (exact, since tokens are produced left to right) and at its stop strings.
    ``usage.calls`` counts those ``generate`` calls.
    """

    capabilities = Capabilities(per_request_seed=False, response_prefix=True, seed_fallback=_SEED_NOTE)

    def __init__(self, config: HFConfig) -> None:
        super().__init__()
        self.config = config
        self.model_path = resolve_model(config.model)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        if config.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            self.device = config.device
        self.dtype = resolve_dtype(config.dtype, on_cpu=self.device == "cpu")
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=config.trust_remote_code)
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=getattr(torch, self.dtype), trust_remote_code=config.trust_remote_code
        ).to(self.device)
        self._model.eval()
        self.max_model_len = config.max_model_len or int(
            getattr(self._model.config, "max_position_embeddings", 2048)
        )
        eos = self._model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._eos_ids.add(self._tokenizer.eos_token_id)
        self._calls_last = 0

    @classmethod
    def from_spec(cls, model: str | None, **options: Any) -> HFEngine:
        return cls(config_from_options(HFConfig, "hf", model, options))

    def identity(self) -> dict[str, Any]:
        model = model_identity(self.config.model)
        return {"backend": "hf", "model": model, "dtype": self.dtype, "max_model_len": self.max_model_len}

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def _generate(self, requests: list[GenRequest], **kwargs: Any) -> list[GenResult]:
        kwargs.pop("progress", None)  # accepted for parity with vLLM; no bar here
        if kwargs:
            raise TypeError(f"unknown generate() options for the hf engine: {sorted(kwargs)}")
        ids = render_token_ids(self._tokenizer, requests)
        results: list[GenResult | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, (req, tok) in enumerate(zip(requests, ids)):
            _, no_room = context_room(req, len(tok), self.max_model_len)
            if no_room is not None:
                results[i] = no_room
                continue
            s = req.sampling
            key = ("greedy",) if s.temperature == 0 else ("sample", s.temperature, s.top_p, s.seed)
            groups.setdefault(key, []).append(i)
        self._calls_last = 0
        for key, members in groups.items():
            # Sorting a group by length keeps padding small; order is restored by index.
            members.sort(key=lambda i: len(ids[i]))
            for start in range(0, len(members), self.config.max_batch_size):
                chunk = members[start : start + self.config.max_batch_size]
                self._run_chunk(key, chunk, requests, ids, results)
        return results  # type: ignore[return-value]

    def _run_chunk(
        self,
        key: tuple,
        chunk: list[int],
        requests: list[GenRequest],
        ids: list[list[int]],
        results: list[GenResult | None],
    ) -> None:
        torch = self._torch
        width = max(len(ids[i]) for i in chunk)
        pad = self._tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids[i])) + ids[i] for i in chunk], device=self.device)
        mask = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in chunk], device=self.device)
        max_new = max(min(requests[i].sampling.max_tokens, self.max_model_len - len(ids[i])) for i in chunk)
        gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": pad}
        if key[0] == "greedy":
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            _, temperature, top_p, seed = key
            gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)
            if seed is not None:
                torch.manual_seed(seed)
        stops = sorted({s for i in chunk for s in requests[i].sampling.stop})
        if stops:
            gen_kwargs.update(stop_strings=stops, tokenizer=self._tokenizer)
        with torch.inference_mode():
            out = self._model.generate(input_ids=input_ids, attention_mask=mask, **gen_kwargs)
        self._calls_last += 1
        for row, i in enumerate(chunk):
            req = requests[i]
            limit = min(req.sampling.max_tokens, self.max_model_len - len(ids[i]))
            new = out[row, width:].tolist()[:limit]
            finish = "length"
            for n, t in enumerate(new):
                if t in self._eos_ids:
                    new, finish = new[: n + 1], "stop"
                    break
            text = self._tokenizer.decode(new, skip_special_tokens=True)
            text, was_cut = cut_at_stop(text, req.sampling.stop)
            if was_cut:
                finish = "stop"
            results[i] = GenResult(
                id=req.id,
                text=text,
                # Cut at a limit lowered to the room left in the context: "context_length".
                finish_reason=context_finish_reason(finish, len(new), req.sampling.max_tokens),
                prompt_tokens=len(ids[i]),
                completion_tokens=len(new),
            )

    def _count_backend_calls(self) -> int:
        return self._calls_last

    def close(self) -> None:
        """Drops the model (memory is freed by the garbage collector)."""
        self._model = None
