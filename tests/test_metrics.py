"""Hand-checkable tests for models/metrics.py.

The base case (step 1 s, season 2, horizon 2, test_from 6):

    t  : 0  1  2  3  4  5  6  7  8  9
    y  : 0  2  1  3  5  4  3  6  4  7
    fc : -  -  -  -  -  - [5,5] [4,8] [8,6] [7,7]      (rows 0..5 are NaN: warm-up)

Scored (origin, h) -> target; seasonal-naive reads T - 2*ceil(h/2) = T - 2:
    (6,1) T=7 y=6  model 5 (-1)  persistence 3 (-3)  seasonal y5=4 (-2)
    (6,2) T=8 y=4  model 5 (+1)  persistence 3 (-1)  seasonal y6=3 (-1)
    (7,1) T=8 y=4  model 4 ( 0)  persistence 6 (+2)  seasonal y6=3 (-1)
    (7,2) T=9 y=7  model 8 (+1)  persistence 6 (-1)  seasonal y7=6 (-1)
    (8,1) T=9 y=7  model 8 (+1)  persistence 4 (-3)  seasonal y7=6 (-1)
    (8,2), (9,*) : target beyond the series -> skipped
MASE scale: pairs (2,0),(3,1),(4,2),(5,3) -> |1-0|,|3-2|,|5-1|,|4-3| = 1,1,4,1 -> 7/4.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from models.metrics import (
    SeriesScore,
    band_table,
    combine_scores,
    format_report,
    horizon_bands,
    mase_scale,
    score_series,
)

NAN = math.nan
T = np.arange(10, dtype=np.float64)
Y = np.array([0, 2, 1, 3, 5, 4, 3, 6, 4, 7], dtype=np.float64)
FC = np.full((10, 2), NAN)
FC[6] = [5, 5]
FC[7] = [4, 8]
FC[8] = [8, 6]
FC[9] = [7, 7]


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-12)


def report_of(t, y, fc, test_from=6.0, season=2, step=1.0):
    s = score_series(t, y, fc, step, season, test_from)
    return s, combine_scores([s], fc.shape[1], season)


def test_base_case_exact_metrics():
    s, r = report_of(T, Y, FC)
    assert s.counts.tolist() == [3, 2]
    assert s.scored_origins == 3
    assert s.mase_scale == approx(7 / 4)
    assert r["horizon"] == 2 and r["season"] == 2 and r["test_points"] == 3
    assert r["model"]["mae"] == approx([2 / 3, 1.0])
    assert r["model"]["rmse"] == approx([math.sqrt(2 / 3), 1.0])
    assert r["model"]["mase"] == approx([(2 / 3) / 1.75, 1 / 1.75])
    assert r["persistence"]["mae"] == approx([8 / 3, 1.0])
    assert r["persistence"]["rmse"] == approx([math.sqrt(22 / 3), 1.0])
    assert r["seasonal_naive"]["mae"] == approx([4 / 3, 1.0])
    assert r["seasonal_naive"]["rmse"] == approx([math.sqrt(2.0), 1.0])
    # ratios: mean model MAE 5/6; persistence 11/6; seasonal 7/6
    assert r["summary"]["mae_ratio_vs_persistence"] == approx(5 / 11)
    assert r["summary"]["mae_ratio_vs_seasonal_naive"] == approx(5 / 7)


def test_report_has_exact_shape_and_plain_floats():
    _, r = report_of(T, Y, FC)
    assert set(r) == {"horizon", "season", "test_points", "model", "persistence", "seasonal_naive", "summary"}
    assert set(r["model"]) == {"mae", "rmse", "mase"}
    assert set(r["persistence"]) == {"mae", "rmse"}
    assert set(r["seasonal_naive"]) == {"mae", "rmse"}
    assert set(r["summary"]) == {"mae_ratio_vs_persistence", "mae_ratio_vs_seasonal_naive"}
    for group in ("model", "persistence", "seasonal_naive"):
        for v in r[group].values():
            assert isinstance(v, list) and len(v) == 2 and all(type(x) is float for x in v)
    assert all(type(x) is float for x in r["summary"].values())


def test_target_in_gap_is_skipped_for_all():
    keep = T != 8  # reading at t=8 missing: (6,2) and (7,1) lose their target
    s, r = report_of(T[keep], Y[keep], FC[keep])
    # remaining: (6,1) T=7 and (7,2) T=9; origin 9 has no targets
    assert s.counts.tolist() == [1, 1]
    assert r["test_points"] == 2
    assert r["model"]["mae"] == approx([1.0, 1.0])
    assert r["persistence"]["mae"] == approx([3.0, 1.0])
    assert r["seasonal_naive"]["mae"] == approx([2.0, 1.0])


def test_seasonal_value_in_gap_is_skipped_for_all():
    keep = T != 5  # (6,1) needs y5 for the seasonal naive -> skipped for the model too
    s, r = report_of(T[keep], Y[keep], FC[keep])
    assert s.counts.tolist() == [2, 2]
    assert r["test_points"] == 3  # origin 6 still scored at h=2
    assert r["model"]["mae"] == approx([0.5, 1.0])  # errors 0, +1
    assert r["persistence"]["mae"] == approx([2.5, 1.0])  # +2, -3
    assert r["seasonal_naive"]["mae"] == approx([1.0, 1.0])  # -1, -1
    # scale now from pairs (2,0),(3,1),(4,2) only: 1,1,4
    assert s.mase_scale == approx(2.0)
    assert r["model"]["mase"] == approx([0.25, 0.5])


def test_nan_forecast_rows_are_excluded():
    fc = FC.copy()
    fc[7] = NAN  # no forecast issued at 7
    s, r = report_of(T, Y, fc)
    assert s.counts.tolist() == [2, 1]
    assert r["test_points"] == 2
    assert r["model"]["mae"] == approx([1.0, 1.0])  # (6,1) -1, (8,1) +1 ; (6,2) +1
    assert r["persistence"]["mae"] == approx([3.0, 1.0])  # -3, -3 ; -1


def test_partially_nan_row_counts_as_not_issued():
    fc = FC.copy()
    fc[7, 1] = NAN
    s, _ = report_of(T, Y, fc)
    assert s.counts.tolist() == [2, 1]


def test_test_from_boundary_inclusive_for_origins_exclusive_for_scale():
    s, r = report_of(T, Y, FC, test_from=6.0)
    assert r["test_points"] == 3  # origin exactly at test_from is scored
    s, r = report_of(T, Y, FC, test_from=6.5)
    assert r["test_points"] == 2  # origins 7, 8
    assert s.counts.tolist() == [2, 1]
    # pair (6,4) now in the in-sample part: |3-5| = 2 -> (7+2)/5
    assert s.mase_scale == approx(9 / 5)
    assert mase_scale(T, Y, 1.0, 2, 6.5) == approx(9 / 5)


def test_mase_nan_without_in_sample_pair():
    s, r = report_of(T, Y, FC, test_from=2.0)  # only t=0,1 < test_from: no pair 2 steps apart
    assert math.isnan(s.mase_scale)
    assert all(math.isnan(x) for x in r["model"]["mase"])
    assert all(math.isfinite(x) for x in r["model"]["mae"])  # MAE is unaffected


def test_seasonal_lag_uses_s_times_ceil_h_over_s():
    # horizon 3, season 2: h=3 reads T - 2*ceil(3/2) = T - 4, not T - 2.
    fc = np.full((10, 3), NAN)
    fc[6:] = 0.0
    s, r = report_of(T, Y, fc)
    assert s.counts.tolist() == [3, 2, 1]
    # h=3: only origin 6, T=9 (y=7), seasonal y5=4 -> error -3 (T-2 would give y7=6, error -1)
    assert r["seasonal_naive"]["mae"][2] == approx(3.0)
    assert r["persistence"]["mae"][2] == approx(4.0)  # y6=3 vs 7
    assert r["model"]["mae"][2] == approx(7.0)  # 0 vs 7
    # h=1 and h=2 as in the base case
    assert r["seasonal_naive"]["mae"][:2] == approx([4 / 3, 1.0])


def test_grid_matching_with_offset_and_jitter():
    # step 1800 s, timestamps not starting at 0, with float jitter: same answer as the unit grid.
    t = 1_388_534_400.0 + T * 1800.0 + np.array([0, 1e-6, -1e-6, 0, 0, 2e-6, 0, 0, -3e-6, 0])
    s = score_series(t, Y, FC, 1800.0, 2, 1_388_534_400.0 + 6 * 1800.0)
    base = score_series(T, Y, FC, 1.0, 2, 6.0)
    np.testing.assert_allclose(s.model_abs, base.model_abs)
    np.testing.assert_allclose(s.seasonal_sq, base.seasonal_sq)
    assert s.counts.tolist() == base.counts.tolist()


def _second_series():
    t = np.arange(8, dtype=np.float64)
    y = np.array([1, 1, 2, 2, 3, 5, 4, 6], dtype=np.float64)
    fc = np.full((8, 2), NAN)
    fc[4] = [4, 4]
    fc[5] = [5, 5]
    return t, y, fc


def test_multi_stream_pooling_equals_summed_errors():
    a = score_series(T, Y, FC, 1.0, 2, 6.0)
    t2, y2, fc2 = _second_series()
    b = score_series(t2, y2, fc2, 1.0, 2, 4.0)
    # stream b by hand: (4,1) T=5 y=5 fc 4 (-1) pers 3 (-2) seas y3=2 (-3)
    #                   (4,2) T=6 y=4 fc 4 ( 0) pers 3 (-1) seas y4=3 (-1)
    #                   (5,1) T=6 y=4 fc 5 (+1) pers 5 (+1) seas y4=3 (-1)
    #                   (5,2) T=7 y=6 fc 5 (-1) pers 5 (-1) seas y5=5 (-1)
    # scale: pairs (2,0),(3,1) -> 1, 1 -> 1
    assert b.counts.tolist() == [2, 2]
    assert b.mase_scale == approx(1.0)
    r = combine_scores([a, b], 2, 2)
    assert r["test_points"] == 3 + 2
    # pooled h=1: model |e| = 1,0,1 + 1,1 -> 4/5 ; h=2: 1,1 + 0,1 -> 3/4
    assert r["model"]["mae"] == approx([4 / 5, 3 / 4])
    assert r["model"]["rmse"] == approx([math.sqrt(4 / 5), math.sqrt(3 / 4)])
    # persistence h=1: 3,2,3 + 2,1 -> 11/5 ; sq 9+4+9+4+1 = 27
    assert r["persistence"]["mae"] == approx([11 / 5, 1.0])  # h=2: -1,-1 + -1,-1
    assert r["persistence"]["rmse"][0] == approx(math.sqrt(27 / 5))
    # seasonal h=1: 2,1,1 + 3,1 -> 8/5 ; h=2: 1,1 + 1,1 -> 1
    assert r["seasonal_naive"]["mae"] == approx([8 / 5, 1.0])
    # MASE pools scaled errors: h=1: (2/1.75 + 2/1) / 5
    assert r["model"]["mase"][0] == approx((2 / 1.75 + 2.0) / 5)
    # order does not matter and sums are what a single concatenated set of errors gives
    r_ba = combine_scores([b, a], 2, 2)
    for g in ("model", "persistence", "seasonal_naive"):
        assert r_ba[g]["mae"] == approx(r[g]["mae"])


def test_combine_ratios_are_ratio_of_means():
    a = score_series(T, Y, FC, 1.0, 2, 6.0)
    t2, y2, fc2 = _second_series()
    b = score_series(t2, y2, fc2, 1.0, 2, 4.0)
    r = combine_scores([a, b], 2, 2)
    m = (4 / 5 + 3 / 4) / 2
    assert r["summary"]["mae_ratio_vs_persistence"] == approx(m / ((11 / 5 + 1.0) / 2))
    assert r["summary"]["mae_ratio_vs_seasonal_naive"] == approx(m / ((8 / 5 + 1.0) / 2))


def test_combine_empty_and_horizon_mismatch():
    r = combine_scores([], 3, 2)
    assert r["test_points"] == 0
    assert len(r["model"]["mae"]) == 3 and all(math.isnan(x) for x in r["model"]["mae"])
    assert math.isnan(r["summary"]["mae_ratio_vs_persistence"])
    with pytest.raises(ValueError):
        combine_scores([SeriesScore.empty(2)], 3, 2)


def test_stream_without_scored_points_does_not_poison_mase():
    a = score_series(T, Y, FC, 1.0, 2, 6.0)
    empty = score_series(T[:3], Y[:3], FC[:3], 1.0, 2, 0.0)  # NaN scale, nothing scored
    assert math.isnan(empty.mase_scale) and empty.counts.sum() == 0
    r = combine_scores([a, empty], 2, 2)
    assert r["model"]["mase"] == approx([(2 / 3) / 1.75, 1 / 1.75])


def test_input_validation():
    with pytest.raises(ValueError):
        score_series(T, Y[:5], FC, 1.0, 2, 6.0)
    with pytest.raises(ValueError):
        score_series(T[::-1], Y, FC, 1.0, 2, 6.0)
    with pytest.raises(ValueError):
        score_series(T, Y, FC, 0.0, 2, 6.0)
    with pytest.raises(ValueError):
        score_series(T, Y, FC, 1.0, 0, 6.0)


def test_large_series_is_fast_and_matches_loop():
    rng = np.random.default_rng(0)
    n, h, season = 17_520, 48, 48
    t = np.arange(n, dtype=np.float64) * 1800.0
    keep = rng.random(n) > 0.01  # ~1% gaps
    t = t[keep]
    y = np.sin(t / 86400.0 * 2 * np.pi) + rng.normal(0, 0.1, t.size)
    fc = y[:, None] + rng.normal(0, 0.2, (t.size, h))
    fc[:100] = NAN
    test_from = t[t.size // 2]
    score_series(t, y, fc, 1800.0, season, test_from)  # warm-up
    start = time.perf_counter()
    s = score_series(t, y, fc, 1800.0, season, test_from)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, elapsed  # milliseconds in practice; generous bound for slow CI

    # Cross-check a few horizons with a straightforward loop.
    pos = {int(round(x / 1800.0)): i for i, x in enumerate(t)}
    for hh in (1, 2, 47, 48):
        abs_m = abs_s = cnt = 0.0
        for i in range(t.size):
            if t[i] < test_from or not np.all(np.isfinite(fc[i])):
                continue
            g = int(round(t[i] / 1800.0)) + hh
            gs = g - season * math.ceil(hh / season)
            if g in pos and gs in pos:
                abs_m += abs(fc[i, hh - 1] - y[pos[g]])
                abs_s += abs(y[pos[gs]] - y[pos[g]])
                cnt += 1
        assert s.counts[hh - 1] == cnt
        assert s.model_abs[hh - 1] == pytest.approx(abs_m, rel=1e-10)
        assert s.seasonal_abs[hh - 1] == pytest.approx(abs_s, rel=1e-10)


def test_huge_gap_uses_sparse_lookup():
    # A reading 10^7 steps later must not allocate a dense grid; results stay correct.
    t = np.concatenate([T, [1e7]])
    y = np.concatenate([Y, [100.0]])
    fc = np.vstack([FC, [[1.0, 1.0]]])
    s = score_series(t, y, fc, 1.0, 2, 6.0)
    base = score_series(T, Y, FC, 1.0, 2, 6.0)
    assert s.counts.tolist() == base.counts.tolist()
    np.testing.assert_allclose(s.model_abs, base.model_abs)


@pytest.mark.parametrize(
    "h, labels",
    [
        (48, ["1", "2..12", "13..24", "25..48"]),
        (8, ["1", "2", "3..4", "5..8"]),
        (4, ["1", "2", "3..4"]),
        (3, ["1", "2", "3"]),  # the bands of models.metrics.horizon_band (ceil(H/4), ceil(H/2))
        (2, ["1", "2"]),
        (1, ["1"]),
    ],
)
def test_horizon_bands_labels(h, labels):
    assert [b[0] for b in horizon_bands(h)] == labels


def test_horizon_bands_cover_every_horizon_once():
    assert horizon_bands(0) == []
    for h in range(1, 101):
        covered = [k for _, sl in horizon_bands(h) for k in range(h)[sl]]
        assert covered == list(range(h))


def test_band_table_and_format_report():
    _, r = report_of(T, Y, FC)
    rows = band_table(r)
    assert [row["band"] for row in rows] == ["1", "2"]
    assert rows[0]["model_mae"] == approx(2 / 3)
    assert rows[0]["persistence_mae"] == approx(8 / 3)
    assert rows[0]["ratio_vs_persistence"] == approx(0.25)
    assert rows[1]["ratio_vs_seasonal_naive"] == approx(1.0)
    text = format_report(r)
    assert "model beats persistence by 54.5% and seasonal naive by 28.6%" in text
    assert "2..2" not in text and "n/a" not in text


def test_format_report_verdicts():
    _, r = report_of(T, Y, FC)
    r["summary"] = {"mae_ratio_vs_persistence": 1.2, "mae_ratio_vs_seasonal_naive": 1.05}
    assert "model LOSES to persistence by 20.0% and to seasonal naive by 5.0%" in format_report(r)
    r["summary"] = {"mae_ratio_vs_persistence": 0.9, "mae_ratio_vs_seasonal_naive": 1.1}
    assert "model beats persistence by 10.0% but LOSES to seasonal naive by 10.0%" in format_report(r)
    empty = combine_scores([], 2, 2)
    assert "cannot compare" in format_report(empty)
