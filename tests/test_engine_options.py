"""Every engine option a shipped template or example passes goes through the real option parser.

Extracted from: slurm/*.sbatch (``MTG_ENGINE_OPTS=...`` and ``--engine-opt`` values,
comments included, since users copy them), slurm/lib/*.sh, slurm/grid_example.yaml
(``engine_opts`` and per-engine ``opts``, commented-out engines too), README.md,
slurm/README.md and docs/*.md (``--engine-opt`` examples). Each option is parsed as the
CLI parses it (``parse_engine_opts``) and built into the backend's config
(``config_from_options(VLLMConfig, ...)``; ``OpenAIConfig`` for openai specs), so a
template cannot pass an option the engine rejects (issue 14, defect 2: the multi-node
Ray template passed ``pipeline_parallel_size`` and ``distributed_executor_backend``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from engines.errors import EngineSpecError
from engines.openai_engine import OpenAIConfig, OpenAIEngine
from engines.registry import config_from_options
from engines.vllm_engine import VLLMConfig
from engines.registry import parse_engine_opts
from tests.conftest import require

REPO = Path(__file__).resolve().parents[1]
# KEY=VALUE with a shell expansion in the value gets a representative number.
_SHELL_VALUE = re.compile(r"\$\{?#?[A-Za-z_][A-Za-z0-9_\[\]@]*\}?")
_OPT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\S+)$")


def _concrete(opt: str) -> str:
    key, _, value = opt.partition("=")
    return f"{key}={_SHELL_VALUE.sub('2', value)}" if "$" in value else opt


def _opts_in_words(text: str) -> list[str]:
    return [w for w in text.split() if _OPT.match(w) and "MTG_ENGINE_OPTS" not in w]


def shell_options(path: Path) -> list[tuple[str, str]]:
    """(where, KEY=VALUE) of MTG_ENGINE_OPTS assignments/mentions and --engine-opt values in a script."""
    found = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        where = f"{path.relative_to(REPO)}:{n}"
        for m in re.finditer(r'MTG_ENGINE_OPTS=\\?"([^"]*)"', line):
            found += [(where, _concrete(o)) for o in _opts_in_words(m.group(1).replace("\\", ""))]
        for m in re.finditer(r'--engine-opt[ =]+"?([A-Za-z_][A-Za-z0-9_]*=[^"\s)]+)', line):
            found.append((where, _concrete(m.group(1))))
        m = re.search(r'MTG_ENGINE_OPTS[^"]*\(""?, e\.g\. "([^"]*)"', line) or re.search(r'MTG_ENGINE_OPTS e\.g\. "([^"]*)"', line)
        if m:
            found += [(where, o) for o in _opts_in_words(m.group(1))]
    return found


def markdown_options(path: Path) -> list[tuple[str, str, str]]:
    """(where, engine spec or "", KEY=VALUE) for every ``--engine-opt`` in a markdown file."""
    # Placeholders: <GPUs per node> stands for a number; KEY=VALUE for any option.
    text = re.sub(r"<[^<>`]*>", "2", path.read_text())
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        spec = re.search(r"--engine[ =]+([a-z]+:[^\s`]+|fake)", line)
        for m in re.finditer(r"--engine-opt[ =`]*\s*([A-Za-z_][A-Za-z0-9_]*=[^\s`|)]+)", line):
            found.append((f"{path.relative_to(REPO)}:{n}", spec.group(1) if spec else "", m.group(1)))
    # option lists inside one code span, possibly across a line break: `--engine-opt a=1 b=2`
    for m in re.finditer(r"`--engine-opt ([^`]*)`", text.replace("\n", " ")):
        found += [("%s (inline)" % path.relative_to(REPO), "", o) for o in _opts_in_words(m.group(1))]
    return [(w, spec, o) for w, spec, o in found if o.partition("=")[0] != "KEY"]


def grid_options() -> list[tuple[str, str, str]]:
    """(where, spec, KEY=VALUE) of grid_example.yaml, commented-out engine lines included."""
    path = REPO / "slurm" / "grid_example.yaml"
    raw = yaml.safe_load(path.read_text())
    uncommented = yaml.safe_load(re.sub(r"^(\s*)# (- \{spec)", r"\1\2", path.read_text(), flags=re.M))
    found = []
    for data in (raw, uncommented):
        for engine in data["engines"]:
            spec = engine if isinstance(engine, str) else engine["spec"]
            extra = [] if isinstance(engine, str) else list(engine.get("opts") or [])
            for o in [*data.get("engine_opts", []), *extra]:
                found.append((f"grid_example.yaml [{spec}]", spec, str(o)))
    return found


def check(spec: str, opts: list[str]) -> object:
    """Builds the backend config exactly as ``create_engine`` would (no model is loaded)."""
    parsed = parse_engine_opts(opts)
    backend, _, model = spec.partition(":")
    if backend == "openai":
        known = {f.name for f in dataclasses.fields(OpenAIConfig)} - {"model"} | {"api_key"}
        unknown = set(parsed) - known
        if unknown:
            raise EngineSpecError(f"unknown openai option(s) {sorted(unknown)}")
        parsed.pop("api_key", None)
        return OpenAIConfig(model=model, **parsed)
    if backend == "vllm-async" or "data_parallel_size" in parsed:
        # data parallelism exists only on the async engine (`mtg grid` / the --shared template)
        from engines.vllm_async_engine import AsyncVLLMConfig

        return config_from_options(AsyncVLLMConfig, "vllm-async", model or "bundled", parsed)
    return config_from_options(VLLMConfig, "vllm", model or "bundled", parsed)


def all_shell_options() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted([*REPO.glob("slurm/*.sbatch"), *REPO.glob("slurm/lib/*.sh")]):
        spec = "openai:gpt-4o-mini" if path.name == "mtg_openai.sbatch" else "vllm:bundled"
        out += [(w, spec, o) for w, o in shell_options(path)]
    return out


def all_markdown_options() -> list[tuple[str, str, str]]:
    out = []
    for path in [REPO / "README.md", REPO / "slurm" / "README.md", *sorted(REPO.glob("docs/*.md"))]:
        out += markdown_options(path)
    return out


def _spec_for(spec: str, opt: str) -> str:
    key = opt.partition("=")[0]
    if spec:
        return spec
    openai_only = {f.name for f in dataclasses.fields(OpenAIConfig)} - {f.name for f in dataclasses.fields(VLLMConfig)}
    return "openai:m" if key in openai_only | {"api_key"} else "vllm:bundled"


def test_extraction_finds_the_templates_options():
    """The extractors see the options that matter (else the checks below would pass vacuously)."""
    shell = {o for _, _, o in all_shell_options()}
    assert {"pipeline_parallel_size=2", "distributed_executor_backend=ray", "tensor_parallel_size=2"} <= shell
    assert "dtype=bfloat16" in shell and any(o.startswith("base_url=") for o in shell)
    grid = {o for _, _, o in grid_options()}
    assert {"dtype=bfloat16", "max_model_len=8192", "gpu_memory_utilization=0.9"} <= grid
    md = {o for _, _, o in all_markdown_options()}
    assert {"tensor_parallel_size=2", "max_model_len=8192", "kv_cache_gib=4"} <= md
    assert any(o.startswith("base_url=") for o in md)


def test_every_shipped_option_is_accepted_by_the_engine_config():
    cases = all_shell_options() + grid_options() + all_markdown_options()
    bad = []
    for where, spec, opt in cases:
        try:
            check(_spec_for(spec, opt), [opt])
        except (EngineSpecError, ValueError, TypeError) as e:
            bad.append(f"{where}: {opt}: {e}")
    assert not bad, "\n".join(bad)


def test_ray_template_options_together_reach_vllm_llm():
    """The multi-node template's options, as one engine would get them, end up in vllm.LLM's kwargs."""
    text = (REPO / "slurm" / "mtg_multinode_ray.sbatch").read_text()
    assignment = re.search(r'^MTG_ENGINE_OPTS="([^"]*)"', text, flags=re.M).group(1)
    opts = [_concrete(o) for o in _opts_in_words(assignment)]
    cfg = check("vllm:Qwen/Qwen2.5-72B-Instruct", opts)
    kw = cfg.llm_kwargs("/models/x", on_cpu=False)
    assert kw["pipeline_parallel_size"] == 2 and kw["distributed_executor_backend"] == "ray"
    assert kw["tensor_parallel_size"] == 2


@pytest.mark.parametrize(
    "opt, message",
    [
        ("pipeline_parallel_size=0", "pipeline_parallel_size must be an integer >= 1"),
        ("pipeline_parallel_size=true", "pipeline_parallel_size must be an integer >= 1"),
        ("distributed_executor_backend=slurm", "distributed_executor_backend must be one of ray, mp"),
        ("no_such_option=1", "unknown vllm engine option"),
    ],
)
def test_bad_vllm_options_are_rejected_with_the_name(opt, message):
    with pytest.raises(EngineSpecError, match=message):
        check("vllm:bundled", [opt])


def test_llm_kwargs_names_exist_in_the_installed_vllm():
    """Every keyword we pass to vllm.LLM is an EngineArgs field of the installed vLLM."""
    arg_utils = require("vllm.engine.arg_utils")  # fails under CI=true when missing
    fields = {f.name for f in dataclasses.fields(arg_utils.EngineArgs)}
    cfg = check("vllm:bundled", ["pipeline_parallel_size=2", "distributed_executor_backend=mp", "kv_cache_gib=1",
                                 "max_num_seqs=8", "block_size=16", "max_model_len=2048"])
    for on_cpu in (True, False):
        unknown = set(cfg.llm_kwargs("/m", on_cpu=on_cpu)) - fields - {"model"}
        assert not unknown, f"not vLLM EngineArgs names (on_cpu={on_cpu}): {sorted(unknown)}"


def test_openai_engine_accepts_the_openai_template_options(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real-0000")
    opts = [o for _, spec, o in all_shell_options() if spec.startswith("openai:")]
    assert opts
    engine = OpenAIEngine.from_spec("gpt-4o-mini", **parse_engine_opts(opts))
    engine.close()
