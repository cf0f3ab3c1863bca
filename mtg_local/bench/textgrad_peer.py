"""The peer of ``mtg bench peer``: the real ``textgrad`` package on an OpenAI-compatible server.

Each (question, seed) item runs the per-item steps of TextGrad's own
``evaluation/solution_optimization.py`` (zou-group/textgrad): a zero-shot
answer from ``tg.BlackboxLLM`` under the protocol's forward system prompt (the
script's simple-evals one under ``--protocol textgrad``), then T times
``optimizer.zero_grad()``, the test-time loss ``MultiChoiceTestTime`` (the
script's loss class; its evaluation instruction is the task's initial loss
prompt, as in our inner loop), ``loss.backward()`` and a
``TextualGradientDescent`` step with the task's TGD constraint, the answer
having the task's role (the script's for multiple choice). Items run from a
``ThreadPoolExecutor`` of a given width, as the script does
(``--num_threads``); the server's continuous batching batches the threads.

Engines: TextGrad's ``ChatExternalClient`` (its ``ChatOpenAI`` on a caller's
``openai.OpenAI`` client), unchanged except:

* its prompt-only disk cache never serves: ``_check_cache`` always misses (and
  counts the lookups), ``_save_cache`` stores nothing, and the cache file
  TextGrad opens at construction goes to a temporary folder, not the user's;
* calls use the workload's sampling (TextGrad's engine takes ``temperature``,
  ``max_tokens``, ``top_p`` per call; its ops pass none, so the defaults would
  be temperature 0, top_p 0.99 and 2000 tokens): the answer engine samples at
  the forward temperature with the item's seed (added to the request by a thin
  client wrapper, since TextGrad's engine has no seed parameter), the loss /
  backward / update engine at the optimizer temperature, all at the
  protocol's top_p and capped at ``max_tokens``;
* with no forward system prompt (the default protocol) the client wrapper
  drops the empty system message TextGrad's engine would send, as our
  requests have none;
* with an item template (the paper's inference template of the default
  protocol, unless the bench's ``--textgrad-prefill false``), the client
  wrapper prefills the forward call's assistant turn with it as our
  ``openai:`` engine does on a vLLM server (the same
  ``engines.openai_support.prefilled_chat`` request) and returns template +
  continuation as the answer's text: TextGrad has no parameter for an
  answer's start, and this is how a TextGrad user on a vLLM server gives it
  one.

So under either protocol TextGrad and our inner loop send the same requests
(with no item template, TextGrad's answers lack it and the two sides'
answers, hence every later request, differ). A TGD step whose output
lacks the ``<IMPROVED_VARIABLE>`` start tag raises in TextGrad (weak models
do this); the driver then keeps the previous answer and goes on, as our inner
loop does, so both send 1 + 3T requests per item.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from engines.adapters.common import import_textgrad
from engines.openai_support import prefilled_chat
from mtg_local.runs.interrupt import Interrupted


class CountingClient:
    """The part of ``openai.OpenAI`` TextGrad's engine calls, counting requests and tokens.

    ``chat.completions.create`` forwards to ``client``; for the ``forward``
    (answer) calls it adds the calling thread's item seed and prefills the
    assistant turn with the calling thread's item template, if any (the
    answer's text is then template + continuation), and it drops an empty
    system message (what TextGrad's engine sends for "no system prompt").
    """

    def __init__(self, client: Any, *, forward: bool) -> None:
        self._client, self._forward = client, forward
        self.api_key = client.api_key
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))
        self._lock = threading.Lock()
        self.requests = self.prompt_tokens = self.completion_tokens = 0

    def _create(self, **kwargs: Any) -> Any:
        seed = getattr(_item, "seed", None)
        if self._forward and seed is not None:
            kwargs["seed"] = seed
        messages = kwargs.get("messages") or []
        if messages and messages[0].get("role") == "system" and not messages[0].get("content"):
            kwargs["messages"] = messages = messages[1:]
        template = getattr(_item, "template", "") if self._forward else ""
        if template:  # the request our openai: engine sends for a response prefix on vLLM
            kwargs["messages"], extra = prefilled_chat(messages, template)
            kwargs["extra_body"] = {**(kwargs.get("extra_body") or {}), **extra}
        resp = self._client.chat.completions.create(**kwargs)
        if template:
            for choice in resp.choices:
                choice.message.content = template + (choice.message.content or "")
        usage = getattr(resp, "usage", None)
        with self._lock:
            self.requests += 1
            self.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
            self.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
        return resp


_item = threading.local()


@contextlib.contextmanager
def _construction_env(api_key: str) -> Iterator[None]:
    """TextGrad's constructor reads these; set them for its duration only."""
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "OPENAI_API_KEY")}
    with tempfile.TemporaryDirectory(prefix="mtg-textgrad-cache-") as tmp:
        os.environ["XDG_CACHE_HOME"] = tmp  # platformdirs: the never-used cache file lands here
        os.environ["OPENAI_API_KEY"] = api_key  # ChatExternalClient copies the client's key otherwise
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def make_engine(client: CountingClient, model: str, *, temperature: float, max_tokens: int, top_p: float = 1.0,
                system_prompt: str | None = None) -> Any:  # fmt: skip
    """TextGrad's ``ChatExternalClient`` with its cache off and the workload's sampling.

    ``system_prompt`` is the engine's default (None: TextGrad's own; "" sends an
    empty one, which ``CountingClient`` drops).
    """
    import_textgrad()
    from textgrad.engine.local_model_openai_api import ChatExternalClient

    class UncachedExternalClient(ChatExternalClient):
        """``ChatExternalClient`` whose disk cache never serves; per-call sampling fixed."""

        cache_lookups = 0

        def _check_cache(self, prompt: str) -> None:
            self.cache_lookups += 1
            return None

        def _save_cache(self, prompt: str, response: str) -> None:
            return None

        def __call__(self, prompt: Any, **kwargs: Any) -> str:
            sampling = {"temperature": temperature, "max_tokens": max_tokens, "top_p": top_p}
            return self.generate(prompt, **{**sampling, **kwargs})

    extra = {} if system_prompt is None else {"system_prompt": system_prompt}
    with _construction_env(client.api_key or "EMPTY"):
        return UncachedExternalClient(client=client, model_string=model, **extra)  # type: ignore[arg-type]


def run_item(question: str, seed: int, template: str, *, steps: int, loss_prompt: str, constraint: str | None, role: str,
             system_prompt: str | None, forward_engine: Any, optimizer_engine: Any) -> list[str]:  # fmt: skip
    """One item, TextGrad's way; returns the errors it met (empty when none).

    ``system_prompt`` None: the forward call has none (the engine's empty default).
    ``template``: the answer's start, prefilled by a forward engine on a
    ``CountingClient`` ("": none).
    """
    tg = import_textgrad()
    from textgrad.loss import MultiChoiceTestTime

    _item.seed, _item.template = seed, template
    errors: list[str] = []
    system = None if system_prompt is None else tg.Variable(system_prompt, requires_grad=False,
                                                            role_description="system prompt")  # fmt: skip
    model = tg.BlackboxLLM(forward_engine, system)
    answer = model(tg.Variable(question, requires_grad=False, role_description="question"))
    instance = tg.Variable(answer.value, requires_grad=True, role_description=role)
    optimizer = tg.TextualGradientDescent(engine=optimizer_engine, parameters=[instance],
                                          constraints=[constraint] if constraint else [])  # fmt: skip
    objective = MultiChoiceTestTime(loss_prompt, engine=optimizer_engine)
    for t in range(1, steps + 1):
        optimizer.zero_grad()
        loss = objective(question, instance)
        loss.backward(engine=optimizer_engine)
        try:
            optimizer.step()
        except IndexError as e:  # no <IMPROVED_VARIABLE> tags: keep the answer, go on
            errors.append(f"step {t} update: {str(e)[:120]}")
    return errors


def run_textgrad(
    items: Sequence[tuple[str, int, str]],
    *,
    width: int,
    base_url: str,
    model: str,
    steps: int,
    temperature: float,
    max_tokens: int,
    loss_prompt: str,
    constraint: str | None,
    role: str,
    system_prompt: str | None,
    top_p: float,
    optimizer_temperature: float = 0.0,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Runs every (question, seed, template) item on a thread pool of ``width``.

    Sampling, system prompt, role and constraint are those of the protocol our
    variants run under (see the module docstring). Each answer starts with
    its item's template ("": none), prefilled in the forward call.

    Returns:
        ``wall_s``, client-side ``requests``/``prompt_tokens``/``completion_tokens``,
        ``cache_lookups`` (TextGrad's disk-cache lookups; each one missed, so
        it equals ``requests`` when every call reached the server),
        ``item_errors`` (items that raised), ``update_errors`` and the first error.
    """
    import openai

    raw = openai.OpenAI(base_url=base_url, api_key="EMPTY", timeout=timeout_s, max_retries=0)
    fwd_client, opt_client = CountingClient(raw, forward=True), CountingClient(raw, forward=False)
    fwd = make_engine(fwd_client, model, temperature=temperature, max_tokens=max_tokens, top_p=top_p,
                      system_prompt="" if system_prompt is None else None)  # fmt: skip
    opt = make_engine(opt_client, model, temperature=optimizer_temperature, max_tokens=max_tokens, top_p=top_p)

    def one(item: tuple[str, int, str]) -> list[str]:
        return run_item(*item, steps=steps, loss_prompt=loss_prompt, constraint=constraint, role=role,
                        system_prompt=system_prompt, forward_engine=fwd, optimizer_engine=opt)  # fmt: skip

    failed: list[str] = []
    update_errors = 0
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="textgrad")
    try:
        futures = [pool.submit(one, it) for it in items]
        for f in futures:
            try:
                update_errors += len(f.result())
            except Interrupted:  # a stop signal, raised here in the main thread: not an item's failure
                raise
            except Exception as e:  # one item's failure never stops the others
                failed.append(f"{type(e).__name__}: {str(e)[:200]}")
    finally:
        # After a stop, items not yet started are dropped; running ones end with their current call.
        pool.shutdown(wait=True, cancel_futures=True)
    wall = time.perf_counter() - t0
    raw.close()
    return {
        "wall_s": wall,
        "requests": fwd_client.requests + opt_client.requests,
        "prompt_tokens": fwd_client.prompt_tokens + opt_client.prompt_tokens,
        "completion_tokens": fwd_client.completion_tokens + opt_client.completion_tokens,
        "cache_lookups": fwd.cache_lookups + opt.cache_lookups,
        "item_errors": len(failed),
        "update_errors": update_errors,
        "first_error": failed[0] if failed else None,
    }
