# Sourced by the single-run templates after mtg_setup: builds one mtg command from MTG_* variables
# and runs it with mtg_run (checkpoint/requeue/resume). Defaults are documented in the templates.
# shellcheck shell=bash
: "${MTG_MODEL:=Qwen/Qwen2.5-7B-Instruct}"
: "${MTG_ENGINE:=vllm:$MTG_MODEL}"
: "${MTG_TASK:=word_sorting}"
: "${MTG_METHOD:=zero_shot_cot}"
: "${MTG_SEEDS:=}"   # empty: the protocol's seeds (0-5, docs/protocol.md)
: "${MTG_ARGS:=}"
: "${MTG_RUN_DIR:=$MTG_RUNS/$MTG_TASK/$MTG_METHOD/${MTG_ENGINE//[\/:]/_}}"
mtg_cmd=$(mtg_command_for "$MTG_METHOD") || mtg_die "unknown MTG_METHOD=$MTG_METHOD (zero_shot_cot|solution_opt|dspy_program|learned_loss|maml|reptile|joint|prompt_opt|copro|miprov2|gepa)"
# shellcheck disable=SC2086  # MTG_ARGS is a word list on purpose
seed_args=()
[[ -n "$MTG_SEEDS" ]] && seed_args=(--seeds "${MTG_SEEDS// /,}")
mtg_run "$mtg_cmd" --task "$MTG_TASK" --method "$MTG_METHOD" --engine "$MTG_ENGINE" \
  ${seed_args[@]+"${seed_args[@]}"} $MTG_ARGS --out "$MTG_RUN_DIR"
