"""A scripted engine for outer-loop tests: accuracy follows a "GOOD" marker.

Any request whose text (messages + response prefix) contains ``GOOD`` is
answered correctly (the sorted words, with ``GOOD`` repeated so it flows
through the loss -> backward -> update phases); other requests get the words
in reverse order (always wrong). Meta calls are recognised by their prompts:
a meta evaluation (theta_meta / theta_R) returns fixed feedback, a backward call
through it (protocol ``meta_step="backward"``) a fixed gradient, and a meta
TGD step of outer step ``s`` (the request's seed) returns the variable with
`` [v{s}]`` appended, plus `` GOOD`` when (s, target) is scripted good. So a
candidate with the marker reaches validation accuracy 1.0 and one without
stays at 0.0: tests decide exactly which steps are accepted.

Selectable by spec in a subprocess after ``register_scripted()``:
``scripted:good=2.template+3;delay=0.2`` (steps 2 (template only) and 3 good;
sleep 0.2 s per call).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from engines.base import GenRequest
from engines.fake_engine import FakeEngine
from mtg_local.prompts import meta_prompts as P
from mtg_local.prompts import textgrad_prompts as TP

_LIST = re.compile(r"List: ([a-z' \-]+)")
_VARIABLE = re.compile(r"<VARIABLE>\s*(.*?)\s*</VARIABLE>", re.DOTALL)
#: where theta_meta / theta_R quote the full variable (the TGD step may show it shortened)
_FULL = {"loss_prompt": re.compile(re.escape(P.META_LOSS_PROMPT.split("{loss_prompt}")[0].split("\n\n")[-1])
                                   + r"(.*?)\n\n", re.DOTALL),
         "template": re.compile(re.escape(P.REPTILE_LOSS_PROMPT.split("{template}")[0].split("\n\n")[-1])
                                + r"(.*?)\n\n", re.DOTALL)}
META_FEEDBACK = "meta feedback: check the order letter by letter."
META_GRADIENT = "meta gradient: ask the evaluator to compare letter by letter."


def request_text(req: GenRequest) -> str:
    return "\n".join(m.content for m in req.messages or ()) + (req.prompt or "") + req.response_prefix


def _system(req: GenRequest) -> str | None:
    return req.messages[0].content if req.messages and req.messages[0].role == "system" else None


def _quotes_meta_prompt(req: GenRequest) -> bool:
    text = request_text(req)
    return P.META_LOSS_PROMPT[:60] in text or P.REPTILE_LOSS_PROMPT[:60] in text


def is_meta_eval(req: GenRequest) -> bool:
    """The theta_meta / theta_R call itself (no system prompt; the backward and TGD calls quote it)."""
    return _system(req) is None and _quotes_meta_prompt(req)


def is_meta_backward(req: GenRequest) -> bool:
    """A backward call through a meta evaluation (meta_step="backward")."""
    return _system(req) == TP.BACKWARD_SYSTEM_PROMPT and _quotes_meta_prompt(req)


def meta_tgd_target(req: GenRequest) -> str | None:
    if is_meta_backward(req):  # it quotes the roles too
        return None
    text = request_text(req)
    for target, role in (("loss_prompt", P.LOSS_PROMPT_ROLE), ("template", P.TEMPLATE_ROLE)):
        if re.search(r"<ROLE>\s*" + re.escape(role) + r"\s*</ROLE>", text):
            return target
    return None


def tgd_variable(req: GenRequest, target: str, seen: dict[str, str] | None = None) -> str:
    """The variable a meta TGD request improves, in full.

    TextGrad's update request shows a long variable shortened (first and last 10 words); the full
    text is then the one the request quotes from the meta prompt (meta_step="backward"), or the one
    an earlier meta evaluation quoted (``seen``: short value -> full value; meta_step="direct").
    """
    text = request_text(req)
    shown = _VARIABLE.search(text).group(1).strip()
    if "(...)" not in shown:
        return shown
    full = _FULL[target].search(text)
    if full:
        return full.group(1).strip()
    return (seen or {}).get(shown, shown)


def _short(value: str) -> str:
    """TextGrad's ``get_short_value`` (10 words each side)."""
    words = value.split(" ")
    return value if len(words) <= 20 else " ".join(words[:10]) + " (...) " + " ".join(words[-10:])


def parse_good(text: str) -> set[tuple[int, str]]:
    """"2.template+3" -> {(2, "template"), (3, "loss_prompt"), (3, "template")}."""
    good: set[tuple[int, str]] = set()
    for part in filter(None, text.split("+")):
        step, _, target = part.partition(".")
        targets = [target] if target else ["loss_prompt", "template"]
        good |= {(int(step), t) for t in targets}
    return good


def scripted_responder(good: set[tuple[int, str]], on_meta_tgd: Callable[[int], None] | None = None):
    """The responder described in the module docstring."""

    seen: dict[str, str] = {}

    def respond(req: GenRequest) -> str:
        if is_meta_eval(req):
            for regex in _FULL.values():
                m = regex.search(request_text(req))
                if m:
                    seen[_short(m.group(1).strip())] = m.group(1).strip()
            return META_FEEDBACK
        if is_meta_backward(req):
            return META_GRADIENT
        target = meta_tgd_target(req)
        close = P.IMPROVED_END_TAG
        open_tag = "" if req.response_prefix.endswith(P.IMPROVED_START_TAG) else P.IMPROVED_START_TAG
        if target is not None:
            step = req.sampling.seed
            if on_meta_tgd is not None:
                on_meta_tgd(step)
            variable = tgd_variable(req, target, seen)
            new = f"{variable} [v{step}]" + (" GOOD" if (step, target) in good else "")
            return f"{open_tag}{new}{close}"
        text = request_text(req)
        m = _LIST.search(text)
        words = m.group(1).split() if m else ["none"]
        ok = "GOOD" in text
        answer = ("GOOD " if ok else "") + "Answer: " + " ".join(sorted(words, reverse=not ok))
        # an inner-loop update: its prompt asks for the tags (prefilled or not)
        if req.response_prefix.endswith(P.IMPROVED_START_TAG) or P.IMPROVED_START_TAG in req.messages[-1].content:
            return open_tag + answer + close
        return answer

    return respond


class ScriptedMetaEngine(FakeEngine):
    """FakeEngine with ``scripted_responder``; optional sleep per call (to be killable)."""

    def __init__(self, good: set[tuple[int, str]] | None = None, *, delay: float = 0.0, **kw: Any) -> None:
        super().__init__(scripted_responder(good or set(), kw.pop("on_meta_tgd", None)), name="scripted", **kw)
        self.delay = delay

    @classmethod
    def from_spec(cls, model: str | None, **options: Any) -> ScriptedMetaEngine:
        """``start=S`` sleeps S seconds while "starting" (like a model load); ``delay=S`` per call."""
        fields = dict(p.partition("=")[::2] for p in (model or "").split(";") if p)
        time.sleep(float(fields.get("start", 0)))
        return cls(parse_good(fields.get("good", "")), delay=float(fields.get("delay", 0)), **options)

    def identity(self) -> dict[str, Any]:
        return {"backend": "scripted-meta"}

    def _generate(self, requests: list[GenRequest], **kwargs: Any):
        if self.delay:
            time.sleep(self.delay)
        return super()._generate(requests, **kwargs)


def register_scripted() -> None:
    """Makes ``scripted:...`` specs create a ``ScriptedMetaEngine`` (this process only)."""
    from engines.registry import register

    register("scripted", "meta_fakes:ScriptedMetaEngine")


def meta_config(**kw: Any):
    """``MetaConfig`` from flat keywords: protocol fields go into its ``Protocol``."""
    import dataclasses

    from mtg_local.meta import MetaConfig
    from mtg_local.protocol import Protocol

    fields = {f.name for f in dataclasses.fields(Protocol)}
    proto = {k: kw.pop(k) for k in list(kw) if k in fields}
    return MetaConfig(**kw, protocol=Protocol(**proto))
