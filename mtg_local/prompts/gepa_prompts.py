"""The textual feedback of GEPA's metric (``mtg_local.baselines.gepa.make_feedback_metric``).

GEPA shows its reflection model, per training example, the program's inputs,
its outputs and this feedback. It is built from the task's own scoring: the
gold answer and the answer the task's ``extract_answer`` read from the response
(``docs/tasks.md``, "GEPA's feedback metric"). Fields: ``gold`` and
``extracted`` (quoted with ``repr``, so spaces and case are visible).
"""

#: The extracted answer equals the gold one (score 1).
GEPA_FEEDBACK_CORRECT = "Correct: the answer read from the response is {extracted!r}, the gold answer."

#: An answer was read, and it is not the gold one (score 0).
GEPA_FEEDBACK_WRONG = "Incorrect: the answer read from the response is {extracted!r}, but the gold answer is {gold!r}."

#: Nothing could be read as an answer (score 0).
GEPA_FEEDBACK_NO_ANSWER = (
    "Incorrect: no answer could be read from the response (it must end with the answer line in the format the "
    "question asks for); the gold answer is {gold!r}."
)
