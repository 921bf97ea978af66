"""The evaluation plot writes a PNG for a small synthetic case."""

from __future__ import annotations

import numpy as np

from models.metrics import combine_scores, score_series
from models.plots import plot_evaluation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _synthetic(n_days: int = 10, step: float = 1800.0, horizon: int = 8, season: int = 48):
    per_day = int(86400 / step)
    t = 1_388_534_400.0 + np.arange(n_days * per_day) * step
    if t.size > 400:
        t = np.delete(t, [300, 301, 302])  # a gap inside the test stretch
    y = 10 + 3 * np.sin(2 * np.pi * t / 86400.0)
    fc = np.full((t.size, horizon), np.nan)
    h = np.arange(1, horizon + 1)
    for i in range(season, t.size):
        fc[i] = 10 + 3 * np.sin(2 * np.pi * (t[i] + h * step) / 86400.0) + 0.2
    test_from = t[t.size // 2]
    score = score_series(t, y, fc, step, season, test_from)
    return t, y, fc, step, test_from, combine_scores([score], horizon, season)


def test_plot_writes_png(tmp_path):
    t, y, fc, step, test_from, report = _synthetic()
    out = tmp_path / "eval.png"
    written = plot_evaluation(
        out,
        stream_id="MT_001",
        timestamps=t,
        values=y,
        forecasts=fc,
        step_seconds=step,
        report=report,
        stretch=336,
        test_from=test_from,
        value_unit="kW",
    )
    assert written == str(out)
    data = out.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC


def test_plot_without_test_from_and_all_nan_forecasts(tmp_path):
    t, y, fc, step, _, report = _synthetic(n_days=2, horizon=3)
    out = tmp_path / "nan.png"
    plot_evaluation(
        out,
        stream_id="s",
        timestamps=t,
        values=y,
        forecasts=np.full_like(fc, np.nan),
        step_seconds=step,
        report=combine_scores([], 3, 48),
    )
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_with_intervals_adds_a_fan_chart_panel(tmp_path):
    import struct

    t, y, fc, step, test_from, _ = _synthetic()
    lower = np.stack([fc - 0.5, fc - 1.0], axis=1)  # [n, L, H]
    upper = np.stack([fc + 0.5, fc + 1.0], axis=1)
    score = score_series(t, y, fc, step, 48, test_from, (0.8, 0.95), lower, upper)
    report = combine_scores([score], fc.shape[1], 48)
    assert report["summary"]["interval_coverage"] == {"0.8": 1.0, "0.95": 1.0}  # the forecasts are 0.2 off
    heights = []
    for name, bounds in (("plain.png", {}), ("fan.png", dict(lower=lower, upper=upper, interval_levels=(0.8, 0.95)))):
        out = tmp_path / name
        plot_evaluation(
            out,
            stream_id="s",
            timestamps=t,
            values=y,
            forecasts=fc,
            step_seconds=step,
            report=report,
            test_from=test_from,
            **bounds,
        )
        data = out.read_bytes()
        assert data[:8] == PNG_MAGIC
        heights.append(struct.unpack(">I", data[20:24])[0])  # IHDR height
    assert heights[1] > heights[0]  # the third panel
