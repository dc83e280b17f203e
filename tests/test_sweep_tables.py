"""The sweep's tables: each run's regret per label-free criterion, and the mean-regret table the benchmark prints."""

from __future__ import annotations

import polars as pl
import pytest

from dapl.sweep import regrets, selection_table, write_tables
from tests.tolerances import assert_close


def _summary(oracle: float, last: float, picked: dict[str, float]) -> dict:
    return {"final": {"target_metric": last}, "oracle": {"target_metric": oracle},
            "validators": {k: {"regret": oracle - v} for k, v in picked.items()}}


def test_regrets_name_criteria_as_eval_selection_does():
    r = regrets(_summary(80.0, 75.5, {"val_entropy": 79.0, "val_snd": 70.0, "pl_agreement": 80.0}))
    assert set(r) == {"regret.last", "regret.entropy", "regret.snd", "regret.pl_agreement"}
    assert_close(r["regret.last"], 4.5)
    assert_close(r["regret.entropy"], 1.0)
    assert_close(r["regret.snd"], 10.0)
    assert r["regret.pl_agreement"] == 0.0
    assert regrets({"final": {"target_metric": 50.0}, "validators": {}}) == {}  # the manual prompt: no choice


def _row(method: str, pair: str, seed: int, **regret: float) -> dict:
    return {"pair": pair, "source": pair[0], "target": pair[-1], "method": method, "seed": seed, "accuracy": 70.0,
            "zero_shot": 60.0, "output_dir": f"/r/{method}/{seed}", "axis": "method",
            **{f"regret.{k}": v for k, v in regret.items()}}


def test_selection_table_averages_each_criterion_per_method(tmp_path):
    rows = [_row("zero_shot", "a->b", 1),
            _row("dapl", "a->b", 1, last=2.0, entropy=1.0, snd=3.0),
            _row("dapl", "b->a", 1, last=4.0, entropy=0.0, snd=6.0),
            _row("dapl+", "a->b", 1, last=1.0, entropy=0.5, snd=0.0)]
    table = selection_table(rows)
    assert table["method"].to_list() == ["dapl", "dapl+"]  # zero_shot had nothing to choose
    dapl = table.row(0, named=True)
    assert (dapl["last"], dapl["entropy"], dapl["snd"], dapl["runs"]) == pytest.approx((3.0, 0.5, 4.5, 2))
    out = write_tables(rows, tmp_path, "benchmark")
    assert "mean regret" in out.markdown and "| dapl+ | 1.00 | 0.50 | 0.00 | 1 |" in out.markdown
    assert pl.read_csv(out.files["selection_csv"]).height == 2
    assert selection_table([_row("zero_shot", "a->b", 1)]) is None
