"""Models past their deprecation date: `prefer` never ranks them, `use` still may (and `check` warns). Every
compile here names its date (TODAY), so no result depends on the day the suite runs."""

from __future__ import annotations

import datetime
import textwrap
from pathlib import Path

import pytest

from engine import Engine
from engine.runtime.decision import NoRouteError

CATALOG = textwrap.dedent("""
    models:
      old-cheap:
        provider: acme
        context: 100k
        price: {input: 0.10, output: 0.10}
        latency_ms: 100
        capabilities: {REASONING: 9}
        deprecation_date: 2020-01-01
      new-pricier:
        provider: acme
        context: 100k
        price: {input: 1.00, output: 1.00}
        latency_ms: 500
        capabilities: {REASONING: 5}
      future-retire:
        provider: acme
        context: 100k
        price: {input: 2.00, output: 2.00}
        latency_ms: 900
        capabilities: {REASONING: 4}
        deprecation_date: 2999-01-01
""")


TODAY = datetime.date(2026, 1, 1)  # after old-cheap's date, long before future-retire's


def _engine(tmp_path: Path, rules: str, today: datetime.date = TODAY) -> Engine:
    (tmp_path / "models.yaml").write_text(CATALOG)
    (tmp_path / "main.route").write_text('catalog "models.yaml"\n' + rules)
    return Engine.load(tmp_path, today=today)


def test_prefer_skips_models_past_their_deprecation_date(tmp_path: Path) -> None:
    e = _engine(tmp_path, 'when tier == "a" prefer cheapest\notherwise prefer capability(REASONING)\n')
    assert e.decide("hi", tier="a").model == "new-pricier"
    d = e.decide("hi")
    assert d.model == "new-pricier"
    rejected = {c.model: c.reason for c in d.candidates if c.status == "rejected"}
    assert rejected == {"old-cheap": "deprecated since 2020-01-01"}
    assert "deprecated since 2020-01-01" in d.explain()


def test_a_future_deprecation_date_does_not_exclude(tmp_path: Path) -> None:
    e = _engine(tmp_path, "otherwise prefer fastest where latency >= 800ms\n")
    assert e.decide("hi").model == "future-retire"
    retired = _engine(tmp_path, "otherwise prefer fastest where latency >= 800ms\n", datetime.date(2999, 1, 1))
    with pytest.raises(NoRouteError) as info:  # on its date it is no longer a candidate: nothing else is that slow
        retired.decide("hi")
    assert "deprecated since 2999-01-01" in info.value.explain()


def test_use_still_names_a_deprecated_model(tmp_path: Path) -> None:
    e = _engine(tmp_path, "otherwise use old-cheap fallback new-pricier\n")
    d = e.decide("hi")
    assert (d.model, d.fallbacks) == ("old-cheap", ["new-pricier"])
