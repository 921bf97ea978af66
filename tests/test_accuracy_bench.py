"""The accuracy benchmark (``make accuracy``) on a tiny input: real rnncast training, real statsforecast peers.

The peers' own seasonal naive must equal our seasonal-naive baseline on the scored points: that ties
the positions, origins and horizons given to the library to the ones ``score_series`` scores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import accuracy
from models.data import load_csv


def _tiny_csv(tmp_path, rows: int = 672, gaps: tuple[int, ...] = ()) -> str:
    """The first two weeks of the half-hourly England and Wales demand (data/taylor.csv)."""
    lines = (accuracy.ROOT / "data" / "taylor.csv").read_text().splitlines()
    kept = [line for i, line in enumerate(lines[1 : rows + 1]) if i not in gaps]
    path = tmp_path / "tiny.csv"
    path.write_text("\n".join([lines[0], *kept]) + "\n")
    return str(path)


def _peers_installed() -> None:
    try:
        import statsforecast  # noqa: F401
    except ImportError:
        pytest.fail("statsforecast is missing: .venv/bin/pip install -r requirements-accuracy.txt (make venv does it)")


def test_origin_rows_are_every_kth_test_row():
    timestamps = np.arange(100, dtype=np.float64)
    from models.peers import origin_rows

    rows = origin_rows(timestamps, 70.0, max_origins=7)
    assert rows.tolist() == list(range(70, 100, 5))
    assert origin_rows(timestamps, 70.0, max_origins=1000).tolist() == list(range(70, 100))
    assert origin_rows(timestamps, 1e9, max_origins=5).size == 0


def test_positions_count_clock_steps_or_open_steps(tmp_path):
    series = load_csv(_tiny_csv(tmp_path, rows=10, gaps=(3, 4))).series["ew_demand"]
    assert accuracy.positions_of(series, open_steps=False).tolist() == [0, 1, 2, 5, 6, 7, 8, 9]
    assert accuracy.positions_of(series, open_steps=True).tolist() == list(range(8))


def test_score_set_end_to_end_on_a_tiny_input(tmp_path, monkeypatch):
    _peers_installed()
    monkeypatch.setattr(accuracy, "CACHE", tmp_path / "cache")
    tiny = accuracy.TestSet(
        "tiny",
        _tiny_csv(tmp_path),
        horizon=4,
        seasons=(48,),
        train_flags=("--units", "8", "--epochs", "1"),
        note="two weeks",
    )
    result = accuracy.score_set(tiny, seeds=[0, 1], workdir=tmp_path, max_origins=6, test_fraction=0.3, epochs=None)
    methods = {m["name"]: m for m in result["methods"]}
    assert set(methods) == {
        "rnncast seed 0",
        "rnncast seed 1",
        accuracy.ENSEMBLE,
        "mstl",
        "auto_ets",
        "holt_winters",
        "seasonal_naive_sf",
        "persistence",
        "seasonal naive",
    }
    assert methods["rnncast seed 0"]["failed"] is None
    assert result["scored_origins"] == 6
    for m in methods.values():
        assert len(m["mae"]) == 4 and all(math.isfinite(v) and v > 0 for v in m["mae"])
    # The library's seasonal naive on our positions and origins is our baseline, point for point.
    np.testing.assert_allclose(methods["seasonal_naive_sf"]["mae"], methods["seasonal naive"]["mae"], rtol=1e-12)
    summary = accuracy.summarise(result)
    assert summary["best_peer"] in accuracy.STRONG_PEERS
    assert len(summary["rnncast_vs_best_peer"]) == 2 and summary["rnncast_vs_best_peer"][0] > 0
    assert summary["ensemble_vs_best_peer"] > 0  # the mean of the two seeds' forecasts, scored like them
    # The peers' forecasts are cached: a second run reads them back unchanged.
    assert list((tmp_path / "cache").glob("tiny-*.npz"))
    again = accuracy.score_set(tiny, seeds=[], workdir=tmp_path, max_origins=6, test_fraction=0.3, epochs=None)
    assert {m["name"]: m["mae"] for m in again["methods"]}["mstl"] == methods["mstl"]["mae"]
    text = accuracy.markdown(
        {
            "started": "now",
            "git_commit": "x",
            "machine": {"cpus": 2, "load_average_at_end": [0]},
            "test_fraction": 0.3,
            "max_origins_per_stream": 6,
            "sets": [{**result, "summary": summary}],
        }
    )
    assert "| tiny |" in text and "MSTL (statsforecast)" in text


def test_a_failed_training_is_reported_with_the_cli_error(tmp_path, monkeypatch):
    _peers_installed()
    monkeypatch.setattr(accuracy, "CACHE", tmp_path / "cache")
    # A season longer than the data: rnncast train refuses, the peers still run.
    tiny = accuracy.TestSet(
        "tiny", _tiny_csv(tmp_path), horizon=4, seasons=(48,), train_flags=("--season", "2000", "--epochs", "1")
    )
    result = accuracy.score_set(tiny, seeds=[0], workdir=tmp_path, max_origins=3, test_fraction=0.3, epochs=None)
    failed = next(m for m in result["methods"] if m["name"] == "rnncast seed 0")
    assert failed["failed"].startswith("error: ") and failed["mae"] == []
    assert accuracy.summarise(result)["failed"] == [failed["failed"]]
