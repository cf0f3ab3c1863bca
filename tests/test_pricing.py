"""Tests of the dated price table and its JSON override."""

from __future__ import annotations

import json

import pytest

from engines.pricing import PRICES_DATE, PricingFileError, estimate_cost, load_prices


def test_known_model_prices_and_dated_names():
    assert PRICES_DATE  # the table says when its prices were taken
    assert estimate_cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert estimate_cost("gpt-4o-mini-2024-07-18", 2_000, 500) == pytest.approx(2_000 * 0.15e-6 + 500 * 0.60e-6)
    assert estimate_cost("smollm2", 10, 10) is None  # unknown, not free


def test_override_file_from_env(tmp_path, monkeypatch):
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"date": "2030-01-01", "models": {"gpt-4o-mini": {"input": 1, "output": 2}, "gw": {"input": 3, "output": 0}}}))
    monkeypatch.setenv("MTG_PRICING_FILE", str(f))
    assert estimate_cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(3.0)
    assert estimate_cost("gw", 1_000_000, 5) == pytest.approx(3.0)
    assert estimate_cost("gpt-4o", 1_000_000, 0) == pytest.approx(2.5)  # built-ins stay


def test_bad_override_is_a_user_error(tmp_path):
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"gpt-4o-mini": {"input": "cheap"}}))
    with pytest.raises(PricingFileError, match="'gpt-4o-mini' needs numeric 'input' and 'output'"):
        load_prices(f)
    with pytest.raises(PricingFileError, match="cannot read pricing file"):
        load_prices(tmp_path / "missing.json")
