"""The evaluation protocol: every setting that must be equal across the rows of one table.

A ``Protocol`` is frozen and validated; every command (``mtg eval``, ``mtg train``,
``mtg baseline``, grid cells, SLURM templates) builds its inner loop from one
(``Protocol.inner_config()``), and ``results.json`` records it as ``protocol``
with ``protocol_hash`` -- a short hash of the canonical JSON, so equal settings
give equal hashes whatever the method or engine. ``mtg report`` only puts runs
with one hash in one table.

What is *not* protocol: the artifacts a method learns or starts from (loss
prompt, inference template, system prompt), the engine and model, and a
method's own optimizer knobs (COPRO breadth, MIPROv2 trials, prompt_opt epochs).
Whether the answer starts with the template at all, and the forward system
prompt a method without its own gets, are protocol (they differ between the
paper's setup and TextGrad's script).

``PRESETS`` names whole protocols: ``textgrad`` is TextGrad's
``evaluation/solution_optimization.py`` request for request.

Defaults and the source of each: ``docs/protocol.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from engines.errors import UserError
from mtg_local.inner_loop import PROMPT_LAYOUTS, UPDATE_PARSINGS, InnerLoopConfig, parse_freeze_when
from mtg_local.prompts import textgrad_prompts
from mtg_local.tasks.base import SCORINGS

#: How the final answer of an inner loop is chosen.
ANSWER_SELECTIONS = ("majority_vote", "last")
#: Majority-vote tie rules: "first" = the tied answer seen first (TextGrad:
#: ``statistics.multimode(labels)[0]``); "last" = the tied answer seen last.
VOTE_TIES = ("first", "last")
#: How a meta step turns the meta evaluation into a new loss prompt / template: "backward" =
#: the paper's (eqs. 6 and 9, TextGrad backpropagation): a backward call on the variable
#: through the meta-evaluation call, then a TGD step on that gradient; "direct" = a TGD step
#: whose feedback is the meta evaluation itself (one call fewer per outer step).
META_STEPS = ("backward", "direct")
#: Length of ``protocol_hash`` (hex digits of SHA-256).
HASH_LENGTH = 12
#: Where the inner loss/backward/update texts come from. "textgrad-0.1.8": TextGrad's own, read
#: from the installed package (``textgrad_prompts.PROMPTS``). "mtg-reworded": the reworded texts
#: runs used before that (TextGrad's structure in this project's words); they are gone, so such
#: a protocol can still be read, hashed and reported, but not run.
PROMPT_SOURCES = (textgrad_prompts.PROMPTS, "mtg-reworded")
LEGACY_PROMPTS = "mtg-reworded"
#: The forward call's system prompt when the method brings none: "none" (no system message) or
#: "simple-evals" (the one TextGrad's solution-optimization script sends).
FORWARD_SYSTEM_PROMPTS: dict[str, str | None] = {
    "none": None,
    "simple-evals": textgrad_prompts.SIMPLE_EVALS_SYSTEM_PROMPT,
}
#: Where a task's initial loss prompt theta_L comes from when the method brings none: "paper"
#: (appendix C, the task's ``initial_loss_prompt``) or "textgrad" (the evaluation instruction of
#: TextGrad's instance task, ``textgrad_prompts.task_loss_prompt``, where TextGrad has one).
LOSS_PROMPT_SOURCES = ("paper", "textgrad")
#: Settings added after runs were first recorded, with the value every earlier run used.
#: ``to_dict`` leaves such a setting out while it has that value, and ``from_dict`` gives it
#: that value when a complete earlier record lacks it, so the canonical JSON, ``protocol_hash``
#: and the recorded ``protocol`` of an earlier run are what they were. A setting whose default
#: is that value keeps earlier results in the same report table (``prompt_layout``); one whose
#: default is not (``prompts``, ``update_parsing``) puts them apart, as they used other requests.
LATER_DEFAULTS: dict[str, Any] = {
    "prompt_layout": "textgrad",
    "prompts": LEGACY_PROMPTS,
    "forward_system_prompt": "none",
    "inference_template": True,
    "update_parsing": "tolerant",
    "meta_step": "direct",
    "loss_prompt_source": "paper",
    "meta_prefill_update_tag": True,
}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Settings shared by every method of one results table (validated on construction).

    Attributes:
        steps: inner-loop TGD steps T (solution_opt and every meta-learned method).
        answer_selection: "majority_vote" over the initial answer and the T iterates, or "last".
        vote_tie: tie rule of the majority vote ("first" | "last" seen).
        vote_counts_none: an answer with nothing extractable votes as its own label (TextGrad's
            ``None``); when it wins, the final answer is one without an answer (scored wrong).
        temperature: forward (answer) sampling temperature.
        optimizer_temperature: inner loss / backward / update calls.
        meta_temperature: meta evaluation and meta TGD-step calls.
        top_p: nucleus mass of every call.
        max_tokens: forward answer cap; optimizer_max_tokens: inner loss / backward / update cap;
            meta_max_tokens: meta call cap.
        keep_answer_format: reject an update whose answer the task cannot extract when the
            previous one had one.
        prefill_update_tag: prefill ``<IMPROVED_VARIABLE>`` in update calls where the engine can
            (TextGrad does not).
        update_parsing: how an update's output is read: "textgrad" (TextGrad's split: an unclosed
            body is taken too) or "tolerant" (only a complete, non-empty body).
        freeze_when: inner-loop early freezing ("never", or conditions; ``inner_loop``).
        seeds: sampling seeds; every (question, seed) pair is one item; accuracy is averaged
            over seeds.
        sample_seed: draws the meta-training minibatches.
        task_seed: the task's data seed (generated data, MMLU/GPQA split shuffle, GPQA options).
        limit: first N questions of every split (None: whole splits).
        scoring: answer extraction rule of the task ("reference" | "lenient").
        minibatch: train questions per outer step.
        outer_steps: outer steps K of meta-training.
        max_meta_pairs: most wrong answers / gradients shown to one meta call.
        prompt_layout: inner loss / backward / update prompt layout ("textgrad": TextGrad's
            fresh conversations; "chained": each phase extends the previous one for prefix
            reuse). It changes what the model sees, so it is part of the hash.
        meta_step: how a meta evaluation (theta_meta / theta_R) becomes a new loss prompt or
            template: "backward" (the paper's: backward call, then TGD step) or "direct"
            (a TGD step straight from the evaluation); see ``META_STEPS``.
        prompts: where the TextGrad layout's texts come from (``PROMPT_SOURCES``).
        forward_system_prompt: the forward system prompt of methods that bring none
            (``FORWARD_SYSTEM_PROMPTS``: "none" or TextGrad's script's "simple-evals").
        inference_template: the forward answer starts with the method's inference template
            y_T (the paper); false: the model starts the answer itself (TextGrad's script).
        loss_prompt_source: the task's initial loss prompt for methods that start from it
            (``LOSS_PROMPT_SOURCES``: the paper's appendix C, or TextGrad's instance task).
        meta_prefill_update_tag: prefill ``<IMPROVED_VARIABLE>`` in the meta TGD step where the
            engine can (ours; TextGrad's TGD prefills nothing). The inner loop's updates follow
            ``prefill_update_tag``.
    """

    steps: int = 3
    answer_selection: str = "majority_vote"
    vote_tie: str = "first"
    vote_counts_none: bool = True
    temperature: float = 0.7
    optimizer_temperature: float = 0.0
    meta_temperature: float = 0.0
    top_p: float = 0.99
    max_tokens: int = 2000
    optimizer_max_tokens: int = 2000
    meta_max_tokens: int = 2000
    keep_answer_format: bool = False
    prefill_update_tag: bool = False
    freeze_when: str = "never"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    sample_seed: int = 0
    task_seed: int = 0
    limit: int | None = None
    scoring: str = "reference"
    minibatch: int = 3
    outer_steps: int = 12
    max_meta_pairs: int = 8
    prompt_layout: str = "textgrad"
    meta_step: str = "backward"
    prompts: str = textgrad_prompts.PROMPTS
    forward_system_prompt: str = "none"
    inference_template: bool = True
    update_parsing: str = "textgrad"
    loss_prompt_source: str = "paper"
    meta_prefill_update_tag: bool = True

    def __post_init__(self) -> None:
        seeds = self.seeds
        if isinstance(seeds, (list, tuple)):
            object.__setattr__(self, "seeds", tuple(seeds))
        if not self.seeds or not all(_is_int(s) and s >= 0 for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        for name, low in (("steps", 0), ("outer_steps", 0), ("minibatch", 1), ("max_meta_pairs", 1),
                          ("max_tokens", 1), ("optimizer_max_tokens", 1), ("meta_max_tokens", 1),
                          ("sample_seed", 0), ("task_seed", 0)):
            v = getattr(self, name)
            if not _is_int(v) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        for name in ("temperature", "optimizer_temperature", "meta_temperature"):
            v = getattr(self, name)
            if not _is_num(v) or not 0 <= v <= 2:
                raise ValueError(f"{name} must be a number in [0, 2], got {v!r}")
        if not _is_num(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        for name, allowed in (("answer_selection", ANSWER_SELECTIONS), ("vote_tie", VOTE_TIES),
                              ("scoring", SCORINGS), ("prompt_layout", PROMPT_LAYOUTS),
                              ("prompts", PROMPT_SOURCES), ("forward_system_prompt", tuple(FORWARD_SYSTEM_PROMPTS)),
                              ("update_parsing", UPDATE_PARSINGS), ("meta_step", META_STEPS),
                              ("loss_prompt_source", LOSS_PROMPT_SOURCES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("vote_counts_none", "keep_answer_format", "prefill_update_tag", "inference_template",
                     "meta_prefill_update_tag"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.limit is not None and (not _is_int(self.limit) or self.limit < 1):
            raise ValueError(f"limit must be an integer >= 1 or None, got {self.limit!r}")
        parse_freeze_when(self.freeze_when)

    # -- views -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (seeds as a list), less ``LATER_DEFAULTS`` at their value."""
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        for name, value in LATER_DEFAULTS.items():
            if d[name] == value:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, record: bool = True, **overrides: Any) -> Protocol:
        """A protocol from ``to_dict`` output, then ``overrides``.

        Missing keys get their defaults, except in a complete record of an earlier
        run (``record``, and every setting but the ``LATER_DEFAULTS`` ones present):
        there a missing later setting gets the value earlier runs used, so e.g. a
        run recorded before ``prompts`` existed reads as the ``mtg-reworded``
        protocol it ran, with its own hash. ``record=False`` (a protocol file
        written by hand) always fills in today's defaults.

        Raises:
            ValueError: an unknown key or a bad value (the message names it).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown protocol settings {unknown}; known: {sorted(names)}")
        earlier = record and set(names) - set(LATER_DEFAULTS) <= set(d)
        later = {k: v for k, v in LATER_DEFAULTS.items() if k not in d} if earlier else {}
        return cls(**{**later, **d, **overrides})

    def replace(self, **changes: Any) -> Protocol:
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)

    def inner_config(self, *, system_prompt: str | None = None, schedule: str = "phase") -> InnerLoopConfig:
        """The inner-loop settings every method runs under this protocol.

        ``schedule`` ("phase" or "item") says how requests are sent, not what
        they are, so it is a run setting outside the protocol (and its hash).
        ``system_prompt`` is the method's own (e.g. a learned one); None gives
        the protocol's ``forward_system_prompt``.

        Raises:
            UserError: the protocol's prompts no longer exist (``LEGACY_PROMPTS``).
        """
        if self.prompts == LEGACY_PROMPTS:
            raise UserError(
                f"this protocol uses prompts={LEGACY_PROMPTS!r}, the reworded TextGrad texts of runs recorded "
                f"before the TextGrad layout read TextGrad's own (docs/protocol.md); they cannot be run any "
                f"more: start a new run (prompts={textgrad_prompts.PROMPTS!r})"
            )
        if system_prompt is None:
            system_prompt = FORWARD_SYSTEM_PROMPTS[self.forward_system_prompt]
        return InnerLoopConfig(
            steps=self.steps,
            temperature=self.temperature,
            optimizer_temperature=self.optimizer_temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            optimizer_max_tokens=self.optimizer_max_tokens,
            system_prompt=system_prompt,
            freeze_when=self.freeze_when,
            majority_vote=self.answer_selection == "majority_vote",
            vote_tie=self.vote_tie,
            vote_counts_none=self.vote_counts_none,
            prefill_update_tag=self.prefill_update_tag,
            keep_answer_format=self.keep_answer_format,
            schedule=schedule,
            prompt_layout=self.prompt_layout,
            update_parsing=self.update_parsing,
            inference_template=self.inference_template,
        )

    def task_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``get_task`` this protocol fixes (data seed, scoring rule)."""
        return {"seed": self.task_seed, "scoring": self.scoring}

    def token_caps(self) -> dict[str, int]:
        """The token caps by name (what the context check compares)."""
        return {"max_tokens": self.max_tokens, "optimizer_max_tokens": self.optimizer_max_tokens,
                "meta_max_tokens": self.meta_max_tokens}


#: The protocol every command uses unless flags override fields.
DEFAULT_PROTOCOL = Protocol()

#: Named protocols (``--protocol NAME``; sources in docs/protocol.md).
PRESETS: dict[str, Protocol] = {
    "default": DEFAULT_PROTOCOL,
    # TextGrad's evaluation/solution_optimization.py: the zero-shot answer under simple-evals'
    # system prompt, no template, every call at its engine's defaults (temperature 0, top_p
    # 0.99, 2000 tokens), one run per question, TextGrad's update reading, no prefill, the
    # loss prompts of its instance tasks.
    "textgrad": DEFAULT_PROTOCOL.replace(
        forward_system_prompt="simple-evals", inference_template=False, temperature=0.0, seeds=(0,),
        prefill_update_tag=False, update_parsing="textgrad", loss_prompt_source="textgrad",
    ),
}


def preset(name: str) -> Protocol:
    """The protocol named ``name`` (``PRESETS``).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown protocol preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def canonical_json(d: dict[str, Any]) -> str:
    """Sorted-keys, compact JSON: the text ``protocol_hash`` hashes."""
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def task_hash_part(identity: dict[str, Any] | None) -> Any:
    """What of a task's identity (``Task.identity()``) enters ``protocol_hash``; None: nothing.

    A built-in task on its own data (its Hub dataset, or the set it generates) adds
    nothing: its name, the code and the protocol's ``task_seed`` and ``scoring`` fix it,
    so the hashes recorded before tasks had identities stay what they were. Every other
    task adds its name and identity ``id`` (definition and data content): a task file, a
    Python task, or a built-in reading a local data file. A multi-task run adds the list
    of its tasks' parts when any of them has one.
    """
    if not identity:
        return None
    if identity.get("kind") == "multi":
        parts = [task_hash_part(t) for t in identity.get("tasks") or []]
        return parts if any(p is not None for p in parts) else None
    if identity.get("kind") == "builtin" and "file_sha256" not in canonical_json(identity.get("data") or {}):
        return None
    return {"name": identity.get("name"), "id": identity.get("id")}


def protocol_hash(p: Protocol | dict[str, Any], *, task: dict[str, Any] | None = None) -> str:
    """Short hex digest of the protocol's canonical JSON (equal settings -> equal hash).

    With ``task`` (a task's ``identity()``), the task's part (``task_hash_part``) is
    hashed with the settings under the key ``"task"``: two runs share a hash only if
    they ran under equal settings on the same task definition and data. Without it
    (or for a built-in task on its own data) the hash is the settings' alone, what
    ``mtg report`` tabulates by (results.json ``settings_hash``).
    """
    d = p.to_dict() if isinstance(p, Protocol) else Protocol.from_dict(p).to_dict()
    part = task_hash_part(task)
    if part is not None:
        d = {**d, "task": part}
    return hashlib.sha256(canonical_json(d).encode()).hexdigest()[:HASH_LENGTH]


def protocol_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two protocol dicts: ``{field: (a's, b's)}``."""
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_context(protocol: Protocol, engines: dict[str, Any], *, meta: bool = False) -> None:
    """Checks the token caps against each engine's context length, where it exposes one.

    Args:
        protocol: the run's protocol.
        engines: ``{"forward": engine, "optimizer": engine}``; engines without a
            ``max_model_len`` attribute (OpenAI, fake) are not checked.
        meta: also check ``meta_max_tokens`` (meta calls go to the optimizer engine).

    Raises:
        ValueError: a cap leaves no room for a prompt in the engine's context; the
            message names both numbers and the flag to change.
    """
    caps = {"forward": [("max_tokens", protocol.max_tokens)],
            "optimizer": [("optimizer_max_tokens", protocol.optimizer_max_tokens)]
            + ([("meta_max_tokens", protocol.meta_max_tokens)] if meta else [])}
    for role, engine in engines.items():
        ctx = getattr(engine, "max_model_len", None)
        if not _is_int(ctx):
            continue
        for name, cap in caps.get(role, []):
            if cap >= ctx:
                raise ValueError(
                    f"--{name.replace('_', '-')} {cap} does not fit the {role} engine's context "
                    f"(max_model_len {ctx}): the prompt needs room too; lower --{name.replace('_', '-')} "
                    f"below {ctx} or raise --engine-opt max_model_len= above {cap}"
                )


def load_task(name: str, protocol: Protocol, *, data_file: str | None = None) -> Any:
    """``get_task(name, data_file=..., **protocol.task_kwargs())``, its initial loss prompt the protocol's.

    ``name`` may be a task file. Under ``loss_prompt_source="textgrad"`` a task TextGrad has an
    instance task for starts from that task's loss prompt (``textgrad_prompts.task_loss_prompt``).
    """
    from mtg_local.tasks import get_task

    task = get_task(name, data_file=data_file, **protocol.task_kwargs())
    if protocol.loss_prompt_source == "textgrad":
        text = textgrad_prompts.task_loss_prompt(task.name)
        if text is not None:
            task.initial_loss_prompt = text
    return task
