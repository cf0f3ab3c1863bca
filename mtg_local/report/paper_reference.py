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


#: Task names of the paper's own tasks (and the keys above) -> paper column key. Only these names
#: get the paper's numbers: built-in names are reserved (a task file or a registered task cannot
#: take them), so a user's task never sits beside the paper's column, whatever it is called.
_PAPER_NAMES = {"word_sorting": "word_sorting", "bbh_word_sorting": "word_sorting",
                "mmlu_machine_learning": "mmlu_ml", "mmlu_ml": "mmlu_ml", "gpqa_diamond": "gpqa", "gpqa": "gpqa"}


def canonical_task(name: str) -> str | None:
    """Maps a report column's task to the paper's column key (None: not the paper's task).

    The paper's task names (``word_sorting`` / ``bbh_word_sorting``, ``mmlu_machine_learning``,
    ``gpqa_diamond``), with a column's data label (``word_sorting [v1/bbh]``) allowed after
    them; anything else, a synthetic set or a user's task, -> None.
    """
    base = name.split(" [", 1)[0].strip().lower()
    return _PAPER_NAMES.get(base)


def paper_accuracy(method: str, task: str) -> float | None:
    """The paper's GPT-4o-mini accuracy (%) for ``method`` on ``task`` (None if not reported)."""
    key = canonical_task(task)
    return PAPER_TABLE2.get(method, {}).get(key) if key else None
