# Shared by the sbatch templates in slurm/ (sourced, never run): environment set-up, the
# method -> sub-command map, tensor-parallel size from the allocation, and `mtg_run`, which runs
# one `mtg` command so that preemption and time limits become a checkpoint + requeue + resume.
#
# Contract with the `mtg` CLI (see slurm/README.md):
#   * `mtg train|eval|baseline` take `--out RUN_DIR`; on SIGUSR1/SIGTERM they stop (train keeps
#     its checkpoint), write results.json status "interrupted" and exit 99 ("requeue me");
#   * `mtg train --resume RUN_DIR` continues a run dir; `mtg eval` rerun with the same run dir
#     and cache recomputes cheaply (every finished generation is a cache hit);
#   * a run dir is locked (RUN_DIR/.lock, flock) by the mtg process, never by this shell.
# shellcheck shell=bash

mtg_log() { echo "[mtg-job ${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local}}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID} $(date +%H:%M:%S)] $*" >&2; }
mtg_die() { mtg_log "error: $*"; exit 2; }

# Defaults for the documented variables; activates the venv; runs the site hook.
mtg_setup() {
  : "${MTG_CHECKOUT:=${SLURM_SUBMIT_DIR:-$PWD}}"
  : "${MTG_VENV:=$MTG_CHECKOUT/.venv}"
  : "${MTG_RUNS:=$MTG_CHECKOUT/runs}"
  : "${MTG_TP:=auto}"
  : "${MTG_SKIP_COMPLETE:=1}"
  export MTG_CHECKOUT MTG_VENV MTG_RUNS
  # HF_HOME: left as the user/site set it (model weights are large: point it at scratch).
  if [[ -n "${HF_HOME:-}" ]]; then export HF_HOME; fi
  if [[ -n "${MTG_SITE_HOOK:-}" ]]; then
    [[ -f "$MTG_SITE_HOOK" ]] || mtg_die "MTG_SITE_HOOK=$MTG_SITE_HOOK is not a file"
    # shellcheck disable=SC1090
    source "$MTG_SITE_HOOK"
  fi
  if [[ -f "$MTG_VENV/bin/activate" ]]; then
    # shellcheck disable=SC1091
    source "$MTG_VENV/bin/activate"
  fi
  command -v mtg >/dev/null || mtg_die "the 'mtg' command is not on PATH (MTG_VENV=$MTG_VENV has no bin/activate; set MTG_VENV or MTG_SITE_HOOK)"
  mtg_log "host $(hostname -s) gpus='${CUDA_VISIBLE_DEVICES:-}' restart=${SLURM_RESTART_COUNT:-0} mtg=$(command -v mtg)"
}

# Prints the sub-command (eval|train|baseline) that runs METHOD.
mtg_command_for() {
  case "$1" in
    zero_shot_cot|solution_opt|dspy_program) echo eval ;;
    learned_loss|maml|reptile|joint) echo train ;;
    prompt_opt|copro|miprov2|gepa) echo baseline ;;
    *) return 1 ;;
  esac
}

# Number of GPUs this job may use: SLURM_GPUS_ON_NODE, else CUDA_VISIBLE_DEVICES entries.
mtg_gpu_count() {
  if [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then echo "$SLURM_GPUS_ON_NODE"; return; fi
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    local -a ids
    IFS=, read -r -a ids <<<"$CUDA_VISIBLE_DEVICES"
    echo "${#ids[@]}"
    return
  fi
  echo 0
}

# Prints line INDEX (0-based, = SLURM_ARRAY_TASK_ID) of MANIFEST: shell-quoted mtg arguments.
mtg_manifest_line() {
  local manifest=$1 index=$2 line
  [[ -f "$manifest" ]] || mtg_die "manifest not found: $manifest (set MTG_MANIFEST)"
  line=$(sed -n "$((index + 1))p" "$manifest")
  [[ -n "$line" ]] || mtg_die "manifest $manifest has no line for array index $index"
  printf '%s\n' "$line"
}

_mtg_child=""
_mtg_pending_signal=""
_mtg_forwarded=""
_mtg_forward() {
  local sig=$1
  _mtg_forwarded=$sig
  mtg_log "received SIG$sig; forwarding to mtg (pid ${_mtg_child:-not started}) to checkpoint"
  if [[ -n "$_mtg_child" ]]; then kill -s "$sig" "$_mtg_child" 2>/dev/null || true
  else _mtg_pending_signal=$sig; fi
}

# mtg_run COMMAND ARGS... : runs `mtg COMMAND ARGS...` with signal forwarding and requeue.
#   * a run dir whose results.json says "complete" is skipped (MTG_SKIP_COMPLETE=1, default);
#   * `train` on a run dir that already has checkpoint.json runs `mtg train --resume RUN_DIR`;
#   * vLLM engines get tensor_parallel_size = GPUs of the job (MTG_TP=auto, default; a number
#     forces it; 1 = never add) unless the arguments already set it; MTG_ENGINE_OPTS adds more;
#   * SIGUSR1 (from `--signal=B:USR1@T`) and SIGTERM are forwarded to mtg; exit code 99 from
#     mtg means "checkpointed, requeue me": the job is requeued and resumes the same run dir;
#   * MTG_DRY_RUN=1 only logs the mtg command line (template checks without a run).
mtg_run() {
  local cmd=$1; shift
  local -a args=("$@")
  local run_dir="" engine="" has_tp=0 i
  for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
      --out) run_dir=${args[i + 1]:-} ;;
      --out=*) run_dir=${args[i]#--out=} ;;
      --engine) engine=${args[i + 1]:-} ;;
      --engine=*) engine=${args[i]#--engine=} ;;
      tensor_parallel_size=*) has_tp=1 ;;
    esac
  done
  if [[ -n "$run_dir" && "$MTG_SKIP_COMPLETE" == 1 && -f "$run_dir/results.json" ]] \
     && grep -q '"status": *"complete"' "$run_dir/results.json"; then
    mtg_log "skip: $run_dir/results.json is complete"
    return 0
  fi
  local -a opts=()
  if [[ "$engine" == vllm:* && $has_tp == 0 ]]; then
    local tp=$MTG_TP
    [[ "$tp" == auto ]] && tp=$(mtg_gpu_count)
    if [[ "$tp" =~ ^[0-9]+$ ]] && (( tp > 1 )); then opts+=(--engine-opt "tensor_parallel_size=$tp"); fi
  fi
  local o
  for o in ${MTG_ENGINE_OPTS:-}; do opts+=(--engine-opt "$o"); done
  local -a argv=("$cmd" "${args[@]}" "${opts[@]}")
  if [[ "$cmd" == train && -n "$run_dir" && -f "$run_dir/checkpoint.json" ]]; then
    # On resume `mtg train` reads only these flags; the rest comes from RUN_DIR/config.json.
    local -a keep=()
    for ((i = 0; i < ${#args[@]}; i++)); do
      case "${args[i]}" in
        --engine-opt|--cache) keep+=("${args[i]}" "${args[i + 1]:-}"); ((i++)) ;;
        --engine-opt=*|--cache=*|--no-cache|--no-progress) keep+=("${args[i]}") ;;
      esac
    done
    argv=(train --resume "$run_dir" "${keep[@]}" "${opts[@]}")
    mtg_log "run dir has a checkpoint (restart ${SLURM_RESTART_COUNT:-0}): resuming"
  fi
  mtg_exec "$run_dir" "${argv[@]}"
}

# mtg_run_grid GRID.yaml : runs `mtg grid GRID.yaml --engine $MTG_GRID_ENGINE` (all cells of one engine on
# one shared engine; only stage $MTG_GRID_STAGE when set) with the GPU layout of the job, signal forwarding and
# requeue (see mtg_grid.sbatch).
mtg_run_grid() {
  local grid=$1
  local -a argv=(grid "$grid" --max-concurrent "${MTG_MAX_CONCURRENT:-32}")
  [[ -n "${MTG_GRID_ENGINE:-}" ]] && argv+=(--engine "$MTG_GRID_ENGINE")
  [[ -n "${MTG_GRID_RUNS_ROOT:-}" ]] && argv+=(--runs-root "$MTG_GRID_RUNS_ROOT")
  [[ -n "${MTG_GRID_STAGE:-}" ]] && argv+=(--stage "$MTG_GRID_STAGE")
  if [[ "${MTG_GRID_BACKEND:-vllm}" == vllm ]]; then
    local gpus tp dp
    gpus=$(mtg_gpu_count)
    # MTG_TP=auto (mtg_setup's default) here means: the grid's tensor_parallel_size, else 1 (one
    # replica per GPU); the GPUs left go to data parallel replicas.
    tp=${MTG_TP:-auto}
    [[ "$tp" == auto ]] && tp=${MTG_GRID_TP:-1}
    [[ "$tp" =~ ^[0-9]+$ ]] && (( tp >= 1 )) || mtg_die "MTG_TP must be a number >= 1 or auto, got '$tp'"
    dp=${MTG_DP:-auto}
    if [[ "$dp" == auto ]]; then dp=$(( gpus >= tp ? gpus / tp : 1 )); fi
    [[ "$dp" =~ ^[0-9]+$ ]] && (( dp >= 1 )) || mtg_die "MTG_DP must be a number >= 1 or auto, got '$dp'"
    if (( tp > 1 )); then argv+=(--engine-opt "tensor_parallel_size=$tp"); fi
    if (( dp > 1 )); then argv+=(--engine-opt "data_parallel_size=$dp"); fi
    mtg_log "GPUs $gpus: tensor parallel $tp x data parallel $dp"
  fi
  local o
  for o in ${MTG_ENGINE_OPTS:-}; do argv+=(--engine-opt "$o"); done
  mtg_exec "" "${argv[@]}"
}

# mtg_exec RUN_DIR ARGS... : runs `mtg ARGS...` in the background, forwards SIGUSR1/SIGTERM to it, and on
# exit code 99 requeues the job (RUN_DIR is only named in the log).
mtg_exec() {
  local run_dir=$1; shift
  local -a argv=("$@")
  # The logged line shows secret engine options (api_key=..., *_token=...) as [redacted].
  local -a shown=() a k
  for a in "${argv[@]}"; do
    k=${a#--engine-opt=}; k=${k%%=*}; k=${k,,}
    if [[ "$a" == *=* && "_${k}_" =~ _(key|apikey|token|secret|password|passwd|authorization|auth|credentials?)_ ]]; then
      shown+=("${a%%=*}=[redacted]")
    else
      shown+=("$a")
    fi
  done
  mtg_log "mtg ${shown[*]}"
  if [[ "${MTG_DRY_RUN:-0}" == 1 ]]; then mtg_log "MTG_DRY_RUN=1: not running"; return 0; fi
  trap '_mtg_forward USR1' USR1
  trap '_mtg_forward TERM' TERM
  mtg "${argv[@]}" &
  _mtg_child=$!
  if [[ -n "$_mtg_pending_signal" ]]; then _mtg_forward "$_mtg_pending_signal"; fi
  local rc
  while :; do
    wait "$_mtg_child"; rc=$?
    # `wait` returns early (rc > 128) when a trapped signal arrives: keep waiting for mtg itself.
    kill -0 "$_mtg_child" 2>/dev/null || break
  done
  trap - USR1 TERM
  _mtg_child=""
  mtg_log "mtg exited with $rc"
  if [[ -n "$_mtg_forwarded" ]] && (( rc == 128 + 10 || rc == 128 + 15 )); then
    # The forwarded signal killed mtg before it had installed its handlers (Python still
    # starting): nothing of this attempt is lost, so requeue it like a checkpointed stop.
    mtg_log "mtg was stopped by SIG$_mtg_forwarded while starting up; treating it as exit 99"
    rc=99
  fi
  _mtg_forwarded=""
  if (( rc == 99 )); then
    local jid=${SLURM_JOB_ID:-}
    [[ -n "${SLURM_ARRAY_JOB_ID:-}" && -n "${SLURM_ARRAY_TASK_ID:-}" ]] && jid=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
    if [[ -n "$jid" ]]; then
      mtg_log "checkpointed; requeueing job $jid (it resumes ${run_dir:-every unfinished cell})"
      if scontrol requeue "$jid"; then
        # Slurm now kills this shell and puts the job back in the queue; exiting first could
        # let the exit status race the requeue, so wait to be killed.
        sleep "${MTG_REQUEUE_WAIT_S:-300}" & wait $!
        mtg_log "still alive ${MTG_REQUEUE_WAIT_S:-300}s after the requeue; exiting 99"
      else
        mtg_log "scontrol requeue $jid failed (job submitted without --requeue?)"
      fi
    fi
  fi
  return "$rc"
}
