"""EngineDSPyLM: DSPy programs on our engines, batched through the coalescer."""

from __future__ import annotations

import threading
import warnings

import pytest

from tests.conftest import require

dspy = require("dspy")  # fails under CI=true when missing

from engines.adapters.dspy_lm import EngineDSPyLM  # noqa: E402
from engines.base import SamplingConfig  # noqa: E402
from engines.coalescer import CoalescerConfig, GenerationFailedError  # noqa: E402
from engines.fake_engine import FakeEngine  # noqa: E402
from tests.dspy_fakes import chat_adapter_responder  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_chain_of_thought_runs_and_maps_kwargs():
    eng = FakeEngine(chat_adapter_responder())
    lm = EngineDSPyLM(eng, temperature=0.3, max_tokens=77, seed=5)
    with dspy.context(lm=lm):
        pred = dspy.ChainOfThought("question -> answer")(question="List: pear apple")
    assert pred.answer == "apple pear" and pred.reasoning == "some reasoning text"
    (req,) = eng.batches[-1]
    assert req.sampling.temperature == 0.3 and req.sampling.max_tokens == 77
    assert req.messages[0].role == "system" and "question" in req.messages[-1].content
    lm.close()


def test_n_samples_are_one_batch_with_distinct_seeds_and_rollouts_differ():
    eng = FakeEngine()
    lm = EngineDSPyLM(eng)
    out = lm("hi", n=3, temperature=0.7, stop=["\n"], max_tokens=9)
    assert out == ["hi", "hi", "hi"]
    batch = eng.batches[-1]
    assert len(eng.batches) == 1 and len(batch) == 3
    seeds = [r.sampling.seed for r in batch]
    assert len(set(seeds)) == 3
    assert batch[0].sampling == SamplingConfig(temperature=0.7, max_tokens=9, stop=("\n",), seed=seeds[0])
    lm("hi", n=3, temperature=0.7, stop=["\n"], max_tokens=9)
    assert [r.sampling.seed for r in eng.batches[-1]] == seeds  # reproducible
    lm.copy(rollout_id=1)("hi", temperature=0.7)
    assert eng.batches[-1][0].sampling.seed not in seeds  # a new rollout samples anew
    lm.close()


def test_response_shape_and_usage():
    eng = FakeEngine(lambda r: "one two")
    lm = EngineDSPyLM(eng)
    resp = lm.forward(messages=[{"role": "user", "content": [{"type": "text", "text": "a b c"}]}], n=2)
    assert resp.choices[1].message.content == "one two"
    assert resp["choices"][0]["finish_reason"] == "stop"
    assert resp.usage.completion_tokens == 4 and resp.usage.prompt_tokens == 3
    assert lm.cache is False  # our CachedEngine caches, not DSPy
    lm.close()


def test_error_result_raises_for_that_call_only():
    eng = FakeEngine(fail_if=lambda r: "nope" if "bad" in r.messages[-1].content else None)
    lm = EngineDSPyLM(eng)
    with pytest.raises(GenerationFailedError, match="nope"):
        lm.forward(prompt="bad one")
    assert lm.forward(prompt="good one").choices[0].message.content == "good one"
    lm.close()


def test_threaded_predictions_are_coalesced():
    class Recording(FakeEngine):
        def _generate(self, requests, **kw):
            self.threads = getattr(self, "threads", set()) | {threading.get_ident()}
            return super()._generate(requests, **kw)

    eng = Recording(chat_adapter_responder())
    lm = EngineDSPyLM(eng, coalescer_config=CoalescerConfig(window_s=0.05))
    letters = [chr(97 + i) for i in range(24)]
    examples = [dspy.Example(question=f"List: b{c} a{c}", answer=f"a{c} b{c}").with_inputs("question") for c in letters]
    program = dspy.ChainOfThought("question -> answer")
    with dspy.context(lm=lm):
        res = dspy.Evaluate(devset=examples, metric=lambda e, p, t=None: e.answer == p.answer, num_threads=24)(program)
    assert res.score == 100.0
    assert eng.usage.calls <= 6 < 24  # 24 threads' calls in a few batches
    assert len(eng.threads) == 1
    lm.close()


def test_bad_engine_argument():
    with pytest.raises(TypeError, match="Engine or a RequestCoalescer"):
        EngineDSPyLM("vllm:bundled")  # type: ignore[arg-type]


@pytest.mark.vllm
def test_one_real_call_on_vllm(vllm_engine):  # noqa: ANN001
    lm = EngineDSPyLM(vllm_engine, max_tokens=32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            out = lm("Say hello.", n=2, temperature=0.7)
        assert len(out) == 2 and all(isinstance(t, str) for t in out)
    finally:
        lm.close()
