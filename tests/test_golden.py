"""Golden values: seeds, minibatches, GPQA option order and the built-in word-sorting data.

The expected values were computed once from the code and are hard-coded: a change to
any of these functions (or to Python's hashing of their inputs) changes what every run
samples, so it must show up here as a failure. They are computed in a subprocess with
a PYTHONHASHSEED different from this process's, so nothing may depend on ``hash()``
of a str (which Python salts per process).

"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROGRAM = r"""
import json
from mtg_local.inner_loop import derive_seed
from mtg_local.meta.outer_loop import sample_minibatch
from mtg_local.tasks import get_task
from mtg_local.tasks.base import Example
from mtg_local.tasks.defined_task import option_permutation
from mtg_local.tasks.word_sorting import generate_examples

train = [Example(id=f"t{i}", question=f"q{i}", answer="a") for i in range(20)]
name = "synthetic_word_sorting"
splits = get_task(name).splits()
print(json.dumps({
    "derive_seed": [derive_seed(s, ph, t) for s in (0, 1, 5) for ph in ("loss", "backward", "update") for t in (1, 2)],
    "minibatch": [[e.id for e in sample_minibatch(train, 3, ss, k)] for ss in (0, 7) for k in (1, 2, 3)],
    "gpqa": [option_permutation(s, r, 4) for s in (0, 1) for r in (0, 1, 2, 197)],
    "words": [[e.id, e.question.rsplit("List: ", 1)[-1], e.answer] for e in generate_examples(3, 0)]
             + [[e.id, e.answer] for e in generate_examples(2, 42)],
    "task": [len(splits.train), len(splits.val), len(splits.test), splits.test[0].id, splits.test[0].answer,
             splits.train[0].answer],
}))
"""

GOLDEN = {
    "derive_seed": [1976886846, 2085439029, 494541159, 998367252, 1750282972, 1580077468, 247198052, 743354198,
                    42565714, 926503075, 858772339, 82353789, 213487084, 1321925574, 1242134661, 521382941,
                    700453077, 522129238],
    "minibatch": [["t6", "t19", "t17"], ["t15", "t11", "t0"], ["t10", "t13", "t17"], ["t2", "t1", "t4"],
                  ["t8", "t5", "t9"], ["t11", "t4", "t1"]],
    "gpqa": [[2, 3, 1, 0], [3, 2, 0, 1], [2, 0, 1, 3], [1, 2, 3, 0], [0, 2, 1, 3], [2, 0, 1, 3], [2, 3, 1, 0],
             [2, 0, 1, 3]],
    "words": [
        ["gen-0-0", "underlying list and expertise paper optimal", "and expertise list optimal paper underlying"],
        ["gen-0-1", "were functions objections include refers elicits", "elicits functions include objections refers were"],
        ["gen-0-2", "conditions firmly conducted unbiased better sample work",
         "better conditions conducted firmly sample unbiased work"],
        ["gen-42-0", "aim cdot conditions encouraging evaluate feedback time toward"],
        ["gen-42-1", "proceed strengths topic"],
    ],
    "task": [50, 100, 100, "gen-0-150", "following insightful may quotes sensitive",
             "and expertise list optimal paper underlying"],
}


@pytest.mark.parametrize("hash_seed", ["0", "4242"])
def test_golden_values_in_a_subprocess_with_another_hash_seed(hash_seed):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": hash_seed}
    p = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout)
    for key, expected in GOLDEN.items():
        assert got[key] == expected, key


def test_golden_values_in_this_process():
    from mtg_local.inner_loop import derive_seed
    from mtg_local.tasks.defined_task import option_permutation

    assert derive_seed(0, "loss", 1) == GOLDEN["derive_seed"][0]
    assert option_permutation(1, 197, 4) == GOLDEN["gpqa"][-1]
