"""TextGradEngine: TextGrad programs (Variable, TextLoss, TGD) on our engines, offline."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import require

# The adapter module first: it sets the offline defaults before it imports textgrad
# (skips the file where textgrad is not installed).
require("engines.adapters.textgrad_engine")  # fails under CI=true when missing

from engines.adapters.textgrad_engine import TextGradEngine  # noqa: E402

import textgrad as tg  # noqa: E402
from engines.coalescer import CoalescerConfig, GenerationFailedError  # noqa: E402
from engines.errors import RequestError  # noqa: E402
from engines.fake_engine import FakeEngine  # noqa: E402


@pytest.fixture(autouse=True)
def _no_openai(monkeypatch):
    # Any path that reached OpenAI or a global engine would need these: make sure none does.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert tg.SingletonBackwardEngine().get_engine() is None


def _scripted(req):
    user = req.messages[-1].content
    if "IMPROVED_VARIABLE" in user:
        return "<IMPROVED_VARIABLE>The capital of France is Paris.</IMPROVED_VARIABLE>"
    return "The answer should name the city."


def test_variable_textloss_tgd_on_fake_engine():
    eng = FakeEngine(_scripted)
    llm = TextGradEngine(eng, max_tokens=64)
    try:
        answer = tg.Variable("France's capital is a city.", role_description="answer to a question", requires_grad=True)
        loss = tg.TextLoss("Evaluate the answer to: what is the capital of France?", engine=llm)(answer)
        loss.backward(engine=llm)
        tg.TGD(parameters=[answer], engine=llm).step()
    finally:
        llm.close()
    assert answer.value == "The capital of France is Paris."
    assert eng.usage.calls == 3  # loss, backward (gradient), TGD step
    assert all(r.sampling.max_tokens == 64 for b in eng.batches for r in b)
    assert tg.SingletonBackwardEngine().get_engine() is None  # no global backward engine was set


def test_environment_keeps_textgrad_offline():
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"].lower() == "true"
    assert os.environ["TEXTGRAD_LOG_DIR"]


def test_generate_options_system_prompt_and_batch():
    eng = FakeEngine()
    llm = TextGradEngine(eng, system_prompt="SYS")
    assert llm("hello", temperature=0.5) == "hello"
    req = eng.batches[-1][0]
    assert req.messages[0].content == "SYS" and req.sampling.temperature == 0.5
    llm.generate("x", system_prompt="OTHER")
    assert eng.batches[-1][0].messages[0].content == "OTHER"
    assert llm.generate_batch(["a", "b", "c"]) == ["a", "b", "c"]
    assert len(eng.batches[-1]) == 3
    with pytest.raises(RequestError, match="text prompts only"):
        llm.generate([b"\x89PNG"])
    llm.close()


def test_threaded_textgrad_calls_are_coalesced_and_errors_stay_local():
    class Recording(FakeEngine):
        def _generate(self, requests, **kw):
            self.threads = getattr(self, "threads", set()) | {threading.get_ident()}
            return super()._generate(requests, **kw)

    eng = Recording(fail_if=lambda r: "bad" if r.messages[-1].content == "q5" else None)
    llm = TextGradEngine(eng, coalescer_config=CoalescerConfig(window_s=0.05))

    def call(i):
        try:
            return llm(f"q{i}")
        except GenerationFailedError as e:
            return e

    with ThreadPoolExecutor(16) as ex:
        out = list(ex.map(call, range(16)))
    llm.close()
    assert isinstance(out[5], GenerationFailedError)
    assert [o for i, o in enumerate(out) if i != 5] == [f"q{i}" for i in range(16) if i != 5]
    assert eng.usage.calls <= 4 and len(eng.threads) == 1


@pytest.mark.vllm
def test_textgrad_program_on_bundled_vllm(vllm_engine):  # noqa: ANN001
    llm = TextGradEngine(vllm_engine, max_tokens=32)
    calls_before = vllm_engine.usage.calls
    try:
        answer = tg.Variable("The words sorted: pear apple.", role_description="answer to a question", requires_grad=True)
        loss = tg.TextLoss("Evaluate this answer to: sort the words pear apple.", engine=llm)(answer)
        loss.backward(engine=llm)
        optimizer = tg.TGD(parameters=[answer], engine=llm)
        try:
            optimizer.step()
            updated = True
        except IndexError as e:  # TextGrad's own error: a 135M model may not write the tags
            assert "could not be indexed" in str(e)
            updated = False
    finally:
        llm.close()
    assert isinstance(loss.value, str) and loss.value
    assert answer.gradients and all(isinstance(g.value, str) for g in answer.gradients)
    assert vllm_engine.usage.calls - calls_before == 3
    if updated:
        assert isinstance(answer.value, str)


# -- TextGrad's log: never in the working directory, never a secret ---------------------------------
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code_or_args: list[str], cwd, **env_extra) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TEXTGRAD_LOG_DIR"}
    env.update(PYTHONPATH=REPO, **env_extra)
    p = subprocess.run([sys.executable, *code_or_args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


def test_a_run_puts_textgrads_log_in_its_run_dir_not_the_cwd(tmp_path):
    # mtg eval imports textgrad through the prompts module, after RunDir.create() named the run dir
    _run(["-m", "mtg_local.cli", "eval", "--engine", "fake", "--limit", "1", "--seeds", "0", "--steps", "1",
          "--no-progress", "--out", "run"], cwd=tmp_path)
    assert not (tmp_path / "logs").exists()
    assert list((tmp_path / "run" / "textgrad_logs").glob("*.jsonl"))


def test_without_a_run_dir_textgrads_log_goes_to_the_temp_dir(tmp_path):
    code = (
        "from mtg_local.prompts import textgrad_prompts as P\n"
        "assert P.LOSS_SYSTEM_PROMPT\n"
        "from engines.adapters.textgrad_engine import TextGradEngine\n"
        "from engines.fake_engine import FakeEngine\n"
        "import textgrad as tg\n"
        "llm = TextGradEngine(FakeEngine())\n"
        "tg.BlackboxLLM(llm)(tg.Variable('q', role_description='q', requires_grad=False))\n"
        "llm.close()\n"
    )
    (tmp_path / "tmp").mkdir()
    _run(["-c", code], cwd=tmp_path, TMPDIR=str(tmp_path / "tmp"))
    assert not (tmp_path / "logs").exists()
    (log,) = (tmp_path / "tmp" / "mtg-textgrad-logs").glob("*.jsonl")
    assert "LLMCall function forward" in log.read_text()


def test_textgrads_log_never_holds_the_api_key(monkeypatch):
    """The key lives in our OpenAI engine; TextGrad only ever sees the adapter, so its log cannot hold it."""
    import logging
    import uuid

    from engines import create_engine
    from tests.fault_server import FaultServer

    key = f"sk-mtgcanary-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", key)  # as a user would have it; TextGrad's engines are never built
    (handler,) = [h for h in logging.getLogger("textgrad").handlers if isinstance(h, logging.FileHandler)]
    with FaultServer(fault_rate=0.0) as srv:
        inner = create_engine("openai:fault-model", base_url=srv.base_url, api_key=key, timeout_s=5.0)
        llm = TextGradEngine(inner, max_tokens=32)
        try:
            answer = tg.Variable("Paris is the capital.", role_description="answer", requires_grad=True)
            loss = tg.TextLoss("Evaluate the answer.", engine=llm)(answer)
            loss.backward(engine=llm)
            optimizer = tg.TGD(parameters=[answer], engine=llm)
            try:
                optimizer.step()
            except IndexError:  # the fault server echoes the prompt: no tags
                pass
        finally:
            llm.close()
            inner.close()
        seen = [c for c in srv.calls if c.body is not None]
    handler.flush()
    text = open(handler.baseFilename).read()
    assert len(seen) == 3 and "_backward_through_llm prompt" in text  # TextGrad logged this program
    assert key not in text and key[13:] not in text
