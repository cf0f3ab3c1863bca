"""The figures of ``mtg bench peer``: one run's record, repeats folded into medians, the JSON record.

Each timed run of a variant gives one record (``run_record``). With
``--repeats N`` a variant runs N times; ``aggregate`` keeps the run with the
median wall as the variant's figures (tokens, requests, ...), its ``wall_s``
being the median of the N walls, with every run's wall, position and repeat
listed under ``runs`` and the spread as ``wall_s_min`` / ``wall_s_max`` /
``wall_s_spread_pct`` ((max - min) / median).

``summarize`` names the headline: ``like_for_like`` = median wall of
TextGrad's fastest width / median wall of ``ours-server``, both on the same
vLLM server sending the same requests (the bench's ``openai:`` engine prefills
as TextGrad's client wrapper does). The in-process variants' ratios compare
different engines (in-process ``vllm.LLM`` vs a server) and are listed apart,
as is folding: identical requests of one phase that our engine generated once
(``deduplicated``), which TextGrad sends each time, so a ratio that includes
folding measures less work, not faster work.
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

#: The headline's name and what it divides.
HEADLINE = "like_for_like"
HEADLINE_DEFINITION = (
    "median wall of TextGrad's fastest thread-pool width / median wall of ours-server: the same vLLM server, "
    "the same requests, no engine start-up"
)


def run_record(name: str, wall: float, start_s: float | None, client: dict[str, Any],
               before: dict[str, float] | None, after: dict[str, float] | None, reset: bool | None,
               **extra: Any) -> dict[str, Any]:  # fmt: skip
    """One run's figures; logged to stderr at once, so a run cut short keeps them."""
    if before is not None and after is not None:
        d = {k: after[k] - before[k] for k in after}
        tokens = {
            "token_source": "vllm counters",
            "requests": int(d["requests"]),
            "prompt_tokens": int(d["prompt_tokens"]),
            "cached_tokens": int(d["cached_tokens"]),
            "completion_tokens": int(d["completion_tokens"]),
            "preemptions": int(d["preemptions"]),
        }
    else:  # no counters (in-process engines, a test server): the client's usage
        tokens = {
            "token_source": "client usage",
            "requests": client["requests"],
            "prompt_tokens": client["prompt_tokens"],
            "cached_tokens": client.get("cached_tokens"),
            "completion_tokens": client["completion_tokens"],
            "preemptions": None,
        }
    cached, prompt = tokens["cached_tokens"], tokens["prompt_tokens"]
    out = {
        "variant": name,
        "wall_s": round(wall, 3),
        "start_s": None if start_s is None else round(start_s, 1),
        "wall_with_start_s": None if start_s is None else round(wall + start_s, 3),
        **tokens,
        "uncached_prompt_tokens": None if cached is None else prompt - cached,
        "prefix_cache_hit_rate": round(cached / prompt, 4) if cached is not None and prompt else None,
        "prefix_cache_reset": reset,
        "client": {k: client[k] for k in ("requests", "prompt_tokens", "completion_tokens")},
        **extra,
    }
    print(f"[bench peer] {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's figures from its runs (``repeat`` and ``position`` set on each): medians and spread."""
    walls = [r["wall_s"] for r in runs]
    median = round(statistics.median(walls), 3)
    # The figures of the run whose wall is the median (the lower middle one of an even count).
    ordered = sorted(runs, key=lambda r: (r["wall_s"], r["repeat"]))
    mid = ordered[(len(ordered) - 1) // 2]
    out = {k: v for k, v in mid.items() if k not in ("repeat", "position")}
    start = None if mid["wall_with_start_s"] is None else mid["wall_with_start_s"] - mid["wall_s"]
    out.update(
        wall_s=median,
        wall_with_start_s=None if start is None else round(median + start, 3),
        repeats=len(runs),
        wall_s_median=median,
        wall_s_min=min(walls),
        wall_s_max=max(walls),
        wall_s_spread_pct=round(100 * (max(walls) - min(walls)) / median, 1) if median else None,
        runs=[{"repeat": r["repeat"], "position": r["position"], "wall_s": r["wall_s"]} for r in runs],
        figures_of_repeat=mid["repeat"],
    )
    return out


def _ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 3) if x and y else None


def summarize(config: Any, variants: dict[str, dict[str, Any]], *, n_items: int, server_spec: str | None,
              run_order: list[list[Any]], protocol: Any, protocol_hash: str, preset_seeds: tuple[int, ...],
              server_prefill: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """The JSON record: per-variant medians, the headline ratio, the other ratios, folding apart."""
    tg = [v for k, v in variants.items() if k.startswith("textgrad-")]
    best = min(tg, key=lambda v: v["wall_s"]) if tg else None
    best_wall = best["wall_s"] if best else None
    inproc, server = variants.get("ours-inproc"), variants.get("ours-server")
    ours = {k: _ratio(best_wall, v["wall_s"]) for k, v in variants.items() if k.startswith("ours-")}
    same = config.same_requests()
    folded = {k: v.get("deduplicated", 0) for k, v in variants.items() if k.startswith("ours-")}
    headline_value = _ratio(best_wall, server["wall_s"]) if server and same else None
    match = None
    if best and server:
        tg_tokens, ours_tokens = best["client"]["prompt_tokens"], server.get("logical_prompt_tokens")
        match = {
            "textgrad_requests": best["client"]["requests"],
            "ours_logical_requests": server.get("logical_requests"),
            "textgrad_prompt_tokens": tg_tokens,
            "ours_logical_prompt_tokens": ours_tokens,
            "prompt_tokens_rel_diff": round(abs(ours_tokens - tg_tokens) / tg_tokens, 4)
            if tg_tokens and ours_tokens is not None else None,
        }  # fmt: skip
    return {
        "bench": "peer",
        "workload": {**config.workload_dict(), "items": n_items,
                     "requests_per_item": 1 + 3 * config.workload.steps},  # fmt: skip
        "protocol": config.protocol,
        "protocol_hash": protocol_hash,
        "seeds": list(protocol.seeds),
        "preset_seeds": list(preset_seeds),
        "inference_template": protocol.inference_template,
        "textgrad_prefill": config.textgrad_prefill and protocol.inference_template,
        "server_engine": server_spec,
        "server_prefill": server_prefill,
        "repeats": config.repeats,
        "order_rule": "each engine's variants run in the listed order on even repeats (0, 2, ...) and in "
        "reverse on odd ones; the server's variants run before the in-process ones",
        "headline": {
            "name": HEADLINE,
            "value": headline_value,
            "textgrad": best["variant"] if best else None,
            "ours": "ours-server" if server else None,
            "same_requests": same,
            "includes_folding": bool(folded.get("ours-server")),
            "definition": HEADLINE_DEFINITION,
        },
        "speedup_like_for_like": headline_value,
        "requests_match": match,
        "folding": {
            "asked": config.fold_seeds,
            "folded_requests": folded,
            "note": "identical requests of one phase generated once by our engine and sent each time by "
            "TextGrad; only with --fold-seeds (otherwise ours send every copy too), and nonzero only where "
            "requests repeat (several seeds at temperature 0, or answers that happen to agree)",
        },
        "textgrad_best": best["variant"] if best else None,
        "speedup_inproc_vs_textgrad_best": _ratio(best_wall, inproc["wall_s"] if inproc else None),
        "speedup_inproc_one_off": _ratio(best_wall, inproc["wall_with_start_s"] if inproc else None),
        "speedups_vs_textgrad_best": ours,
        "fastest_ours": max((k for k in ours if ours[k]), key=lambda k: ours[k], default=None),
        "speedup_definition": "median wall(fastest TextGrad width) / median wall(ours), no engine start-up; "
        "inproc: the in-process engine against TextGrad on a server (different engines); inproc_one_off: "
        "ours with its engine start, TextGrad on a running server",
        "order": list(variants),
        "run_order": run_order,
        "variants": variants,
    }


def table(record: dict[str, Any]) -> str:
    """The per-variant medians as a Markdown table (for docs/performance.md)."""
    rows = ["| variant | wall s (median) | spread % | with start-up s | requests | folded | prompt tok "
            "| cached tok | generated tok |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for v in record["variants"].values():
        cells = [v["variant"], v["wall_s"], v.get("wall_s_spread_pct"), v["wall_with_start_s"], v["requests"],
                 v.get("deduplicated"), v["prompt_tokens"], v["cached_tokens"], v["completion_tokens"]]  # fmt: skip
        rows.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(rows)
