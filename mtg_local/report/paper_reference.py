"""Table 2 of the metaTextGrad paper: test accuracy (%) of GPT-4o-mini, QUOTED FROM THE PAPER.

These numbers were not measured by this project; they are copied from Table 2 of
"metaTextGrad" (seed/000_1a3d9abe0c21355f.txt) so reports can show them beside local
results. Accuracy averaged over 6 seeds in the paper; the paper gives no std.
The paper has no row for the joint (loss + template) method, nor for GEPA (later than the
paper); their paper cells read "—".
"""

from __future__ import annotations

#: Label used for the reference column in every report.
PAPER_LABEL = "GPT-4o-mini (paper, Table 2)"
PAPER_MODEL = "gpt-4o-mini"
PAPER_SOURCE = "metaTextGrad paper, Table 2 (test accuracy %, mean over 6 seeds; quoted, not reproduced)"

#: Paper column name -> canonical task key used by reports.
PAPER_TASKS = {"word_sorting": "Word Sorting", "mmlu_ml": "MMLU Machine Learning", "gpqa": "GPQA"}

#: method -> task key -> accuracy in percent, as printed in Table 2.
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "zero_shot_cot": {"word_sorting": 45.7, "mmlu_ml": 74.4, "gpqa": 38.6},
    "copro": {"word_sorting": 55.0, "mmlu_ml": 73.8, "gpqa": 34.2},
    "miprov2": {"word_sorting": 57.0, "mmlu_ml": 75.0, "gpqa": 42.3},
    "prompt_opt": {"word_sorting": 58.3, "mmlu_ml": 76.8, "gpqa": 40.0},
    "solution_opt": {"word_sorting": 60.0, "mmlu_ml": 76.6, "gpqa": 38.4},
    "learned_loss": {"word_sorting": 73.2, "mmlu_ml": 75.6, "gpqa": 39.1},
    "maml": {"word_sorting": 66.0, "mmlu_ml": 78.0, "gpqa": 43.0},
    "reptile": {"word_sorting": 65.8, "mmlu_ml": 77.4, "gpqa": 40.9},
}


def canonical_task(name: str) -> str | None:
    """Maps a task name used by runs to the paper's column key (None: not in the paper).

    ``word_sorting`` / ``bbh_word_sorting`` (and variants such as ``word_sorting-bbh``) ->
    ``word_sorting``; anything with ``mmlu`` -> ``mmlu_ml``; anything with ``gpqa`` -> ``gpqa``;
    a synthetic task (``synthetic_*``: generated data, not the paper's) -> None.
    """
    n = name.lower()
    if n.startswith("synthetic"):
        return None
    if n.startswith("word_sorting") or n.startswith("bbh_word_sorting"):
        return "word_sorting"
    if "mmlu" in n:
        return "mmlu_ml"
    if "gpqa" in n:
        return "gpqa"
    return None


def paper_accuracy(method: str, task: str) -> float | None:
    """The paper's GPT-4o-mini accuracy (%) for ``method`` on ``task`` (None if not reported)."""
    key = canonical_task(task)
    return PAPER_TABLE2.get(method, {}).get(key) if key else None
