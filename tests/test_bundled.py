"""The bundled model: one-time conversion, idempotence, crash safety, name resolution."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engines import bundled
from engines.bundled import MARKER, is_prepared, prepare_bundled_model, resolve_model
from engines.errors import ModelNotFoundError

REPO = Path(__file__).resolve().parents[1]


def test_bundled_folder_is_a_real_hf_model(bundled_model_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    assert is_prepared(bundled_model_path)
    assert json.loads((bundled_model_path / MARKER).read_text())["recipe"] == bundled.RECIPE_VERSION
    config = AutoConfig.from_pretrained(bundled_model_path)
    assert config.model_type == "llama" and config.tie_word_embeddings
    tok = AutoTokenizer.from_pretrained(bundled_model_path)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert not list(bundled_model_path.parent.glob(f".{bundled_model_path.name}.tmp-*"))


def test_second_prepare_is_a_no_op(bundled_model_path: Path) -> None:
    marker_mtime = (bundled_model_path / MARKER).stat().st_mtime_ns
    t0 = time.perf_counter()
    assert prepare_bundled_model() == bundled_model_path
    assert time.perf_counter() - t0 < 5
    assert (bundled_model_path / MARKER).stat().st_mtime_ns == marker_mtime
    assert resolve_model("bundled") == str(bundled_model_path)


def _fake_convert(gguf: Path, out: Path) -> None:
    (out / "config.json").write_text("{}")


def test_half_written_folder_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "models" / "m"
    target.mkdir(parents=True)
    (target / "config.json").write_text('{"partial": true}')  # a crash left this, no marker
    assert not is_prepared(target)
    monkeypatch.setattr(bundled, "_convert_gguf", _fake_convert)
    assert prepare_bundled_model(target) == target
    assert is_prepared(target) and (target / "config.json").read_text() == "{}"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m", "m.lock"]


def test_failed_conversion_leaves_nothing_that_looks_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    target = tmp_path / "m"
    monkeypatch.setattr(bundled, "_convert_gguf", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_bundled_model(target)
    assert not target.exists()
    assert not list(tmp_path.glob(".m.tmp-*"))


def test_two_processes_convert_once(tmp_path: Path) -> None:
    log = tmp_path / "conversions.log"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from engines import bundled
        def slow_convert(gguf, out):
            with open({str(log)!r}, "a") as f:
                f.write("converted\\n")
            time.sleep(2)
            (out / "config.json").write_text("{{}}")
        bundled._convert_gguf = slow_convert
        print(bundled.prepare_bundled_model(Path({str(tmp_path / 'm')!r})))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [str(tmp_path / "m")] * 2
    assert log.read_text().splitlines() == ["converted"]


def test_resolve_model_names(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="/no/such/model"):
        resolve_model("/no/such/model")
    with pytest.raises(ModelNotFoundError, match=r"\./missing"):
        resolve_model("./missing")
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_mtg_home_decides_the_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MTG_HOME", str(tmp_path / "home"))
    assert bundled.bundled_model_dir() == tmp_path / "home" / "models" / "smollm2-135m-instruct"
    monkeypatch.delenv("MTG_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bundled.bundled_model_dir() == tmp_path / "xdg" / "mtg-local" / "models" / "smollm2-135m-instruct"


def test_prepare_model_command_prints_the_path(bundled_model_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mtg_local.cli", "prepare-model"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(bundled_model_path)
