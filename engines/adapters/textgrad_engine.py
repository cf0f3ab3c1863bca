"""``TextGradEngine``: run existing TextGrad code on our engines (e.g. local vLLM).

Pass it wherever TextGrad expects an engine::

    from engines.adapters.textgrad_engine import TextGradEngine
    import textgrad as tg

    llm = TextGradEngine(create_engine("vllm:bundled"), max_tokens=256)
    answer = tg.Variable("...", role_description="answer", requires_grad=True)
    loss = tg.TextLoss("Evaluate the answer.", engine=llm)(answer)
    loss.backward(engine=llm)          # explicit: no global backward engine
    tg.TGD([answer], engine=llm).step()

``generate(prompt, system_prompt=None, **kw)`` and ``__call__`` follow
TextGrad's ``EngineLM``. Calls go through a ``RequestCoalescer``, so TextGrad
code that runs items in a thread pool reaches the engine as batched calls;
``generate_batch`` sends a list in one call directly.

Keeping TextGrad offline: this module imports TextGrad through
``engines.adapters.common.import_textgrad``, which sets
``LITELLM_LOCAL_MODEL_COST_MAP`` and ``TEXTGRAD_LOG_DIR`` first (TextGrad's
log never lands in the working directory);
the adapter never calls ``textgrad.get_engine`` (which picks a provider by a
substring of the model name and reads API keys) nor sets TextGrad's global
backward engine. Caching is our ``CachedEngine``'s job (TextGrad's own cache
is keyed by the prompt alone).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from engines.adapters.common import adopt_coalescer, derive_seed, import_textgrad

import_textgrad()

from textgrad.engine import EngineLM  # noqa: E402

from engines.base import Engine, GenRequest, Message, SamplingConfig  # noqa: E402
from engines.coalescer import CoalescerConfig, GenerationFailedError, RequestCoalescer  # noqa: E402
from engines.errors import RequestError  # noqa: E402

#: TextGrad's default system prompt for its engines (``EngineLM.system_prompt``).
DEFAULT_SYSTEM_PROMPT: str = EngineLM.system_prompt


def _prompt_text(content: Any) -> str:
    """TextGrad passes a string, or a list of parts for multimodal engines (text only here)."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)) and all(isinstance(p, str) for p in content):
        return "\n".join(content)
    raise RequestError("TextGradEngine takes text prompts only (this engine is not multimodal)")


class TextGradEngine(EngineLM):
    """A TextGrad ``EngineLM`` over one of our engines (through a request coalescer).

    Args:
        engine: an ``Engine`` (a private coalescer is made) or a shared ``RequestCoalescer``.
        model_string: name TextGrad shows (default ``"mtg/<spec>"``).
        system_prompt: used when a call gives none (or an empty one), as TextGrad's
            engines do (``ChatOpenAI``: ``system_prompt if system_prompt else self.system_prompt``).
        temperature / max_tokens / top_p: default sampling (a call may override them).
        seed: base seed; a call's seed is ``derive_seed(seed, system prompt, prompt)``, so a
            rerun is reproducible whatever order threads run in, and a repeated identical
            call gives the same text (as TextGrad's own prompt cache would).
        coalescer_config: batching window/size of a private coalescer.
    """

    is_multimodal = False

    def __init__(
        self,
        engine: Engine | RequestCoalescer,
        *,
        model_string: str | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        temperature: float = 0.0,
        max_tokens: int = 512,
        top_p: float = 1.0,
        seed: int = 0,
        coalescer_config: CoalescerConfig | None = None,
    ) -> None:
        self.coalescer, self._owns_coalescer, spec = adopt_coalescer(engine, coalescer_config)
        self.model_string = model_string or f"mtg/{spec}"
        self.system_prompt = system_prompt
        self.sampling = SamplingConfig(temperature=temperature, max_tokens=max_tokens, top_p=top_p)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = seed
        self._calls = itertools.count()

    def _request(self, prompt: Any, system_prompt: str | None, overrides: dict[str, Any]) -> GenRequest:
        system = system_prompt or self.system_prompt
        text = _prompt_text(prompt)
        msgs = ([Message("system", system)] if system else []) + [Message("user", text)]
        call = next(self._calls)
        known = {k: overrides[k] for k in ("temperature", "max_tokens", "top_p") if overrides.get(k) is not None}
        try:
            sampling = self.sampling.replace(seed=derive_seed(self.seed, system, text), **known)
        except ValueError as e:
            raise RequestError(f"bad sampling setting: {e}") from e
        return GenRequest(messages=tuple(msgs), sampling=sampling, id=f"tg-{call}")

    def generate(self, prompt: Any, system_prompt: str | None = None, **kwargs: Any) -> str:
        """One completion (TextGrad's ``EngineLM.generate``).

        Args:
            prompt: the user message.
            system_prompt: overrides the engine's default system prompt.
            **kwargs: ``temperature``, ``max_tokens``, ``top_p`` override the
                defaults for this call; others are ignored.

        Raises:
            GenerationFailedError: the request came back with an error.
        """
        return self.coalescer.generate_one(self._request(prompt, system_prompt, kwargs)).text

    def __call__(self, prompt: Any, **kwargs: Any) -> str:
        return self.generate(prompt, **kwargs)

    def generate_batch(self, prompts: Sequence[Any], system_prompt: str | None = None, **kwargs: Any) -> list[str]:
        """Completions of many prompts in one engine call, in order.

        Raises:
            GenerationFailedError: for the first prompt whose request failed.
        """
        results = self.coalescer.generate([self._request(p, system_prompt, kwargs) for p in prompts])
        for r in results:
            if not r.ok:
                raise GenerationFailedError(r)
        return [r.text for r in results]

    def close(self) -> None:
        """Closes a private coalescer (the engine belongs to the caller)."""
        if self._owns_coalescer:
            self.coalescer.close()

    def __repr__(self) -> str:
        return f"TextGradEngine(model_string={self.model_string!r})"
