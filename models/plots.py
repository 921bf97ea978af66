"""Evaluation figure for ``rnncast evaluate`` (matplotlib, Agg backend, imported lazily).

The figure has two panels:

1. One stream over a stretch of its test part: the actual readings, the model's full ``H``-step forecast
   path issued at a few origins (about one per day), and the 1-step-ahead forecast line.
2. MAE per horizon for the model, persistence and seasonal naive (from a
   :func:`models.metrics.combine_scores` report).
3. With prediction intervals: a fan chart, the forecast issued one horizon before the stretch's end
   with its intervals (one shade per level) against what happened, and the empirical coverage per
   level in the title.

matplotlib is imported inside :func:`plot_evaluation` so importing this module stays cheap; the figure
is drawn on an explicit Agg canvas (no pyplot global state, safe in worker threads).
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime

import numpy as np

__all__ = ["plot_evaluation"]

_DAY_SECONDS = 86400.0


def _step_label(step_seconds: float) -> str:
    """Human-readable step length, e.g. ``30 min`` or ``1 h``."""
    if step_seconds % 86400 == 0:
        return f"{int(step_seconds // 86400)} d"
    if step_seconds % 3600 == 0:
        return f"{int(step_seconds // 3600)} h"
    if step_seconds % 60 == 0:
        return f"{int(step_seconds // 60)} min"
    return f"{step_seconds:g} s"


def _to_datetimes(seconds: np.ndarray) -> list[datetime]:
    return [datetime.fromtimestamp(float(s), tz=UTC) for s in seconds]


def _stretch_rows(timestamps: np.ndarray, forecasts: np.ndarray, test_from: float | None, stretch: int) -> np.ndarray:
    """Rows of the stretch to draw: the last ``stretch`` readings of the test part.

    The test part is ``timestamps >= test_from`` when given, otherwise it starts at the first reading
    with a finite forecast row (or the whole series if there is none).
    """
    n = timestamps.size
    if test_from is not None:
        start = int(np.searchsorted(timestamps, test_from, side="left"))
    else:
        issued = np.flatnonzero(np.all(np.isfinite(forecasts), axis=1))
        start = int(issued[0]) if issued.size else 0
    if start >= n:  # no test part: fall back to the end of the series
        start = 0
    return np.arange(max(start, n - max(int(stretch), 1)), n)


def plot_evaluation(
    path: str | os.PathLike[str],
    *,
    stream_id: str,
    timestamps: np.ndarray,
    values: np.ndarray,
    forecasts: np.ndarray,
    step_seconds: float,
    report: dict,
    stretch: int = 336,
    test_from: float | None = None,
    max_origins: int = 7,
    value_unit: str | None = None,
    dpi: int = 110,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    interval_levels: tuple[float, ...] = (),
) -> str:
    """Writes the two-panel evaluation figure as a PNG.

    Args:
        path: Output file (PNG).
        stream_id: The stream shown in panel 1 (used in the title).
        timestamps: Epoch seconds of the stream's readings, strictly increasing, shape ``[n]``.
        values: The stream's readings, shape ``[n]``.
        forecasts: float64 ``[n, H]``; row ``i`` is the forecast issued at reading ``i`` for
            ``t_i + h*step_seconds`` (``h = 1..H``), NaN rows where none was issued.
        step_seconds: Grid step in seconds.
        report: The pooled report from :func:`models.metrics.combine_scores` (panel 2).
        stretch: Number of readings shown in panel 1: the last ``stretch`` readings of the test part
            (336 = 7 days of half-hourly data).
        test_from: Start of the test part (epoch seconds); if ``None``, the first issued forecast.
        max_origins: At most this many full ``H``-step forecast paths are drawn (about one per day,
            spaced further apart if the stretch is longer).
        value_unit: Unit of the values for the axis labels (e.g. ``"kW"``), if known.
        dpi: Resolution of the PNG.
        lower: ``[n, L, H]`` interval lower bounds issued with ``forecasts`` (panel 3; None: no panel).
        upper: ``[n, L, H]`` upper bounds.
        interval_levels: The L levels.

    Returns:
        The path written, as a string.

    Raises:
        ValueError: If the shapes are inconsistent.
    """
    import matplotlib
    import matplotlib.dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    timestamps = np.asarray(timestamps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    forecasts = np.asarray(forecasts, dtype=np.float64)
    if forecasts.ndim != 2 or forecasts.shape[0] != timestamps.size or values.shape != timestamps.shape:
        raise ValueError(
            f"inconsistent shapes: timestamps {timestamps.shape}, values {values.shape}, forecasts {forecasts.shape}"
        )
    horizon = forecasts.shape[1]
    unit = f" ({value_unit})" if value_unit else ""
    step_txt = _step_label(step_seconds)

    fan = lower is not None and upper is not None and len(interval_levels) > 0
    fig = Figure(figsize=(12, 12.5 if fan else 8.5), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    if fan:
        ax1, ax2, ax3 = fig.subplots(3, 1, height_ratios=[3, 2, 3])
    else:
        ax1, ax2 = fig.subplots(2, 1, height_ratios=[3, 2])

    # Panel 1: actuals, 1-step-ahead line and a few full forecast paths.
    rows = _stretch_rows(timestamps, forecasts, test_from, stretch)
    if rows.size:
        t_lo, t_hi = timestamps[rows[0]], timestamps[rows[-1]]
        ax1.plot(_to_datetimes(timestamps[rows]), values[rows], color="black", lw=1.4, label="actual")

        # 1-step-ahead forecasts: issued at origin i, placed at t_i + step; NaN breaks the line at gaps.
        one = forecasts[rows, 0] if horizon else np.full(rows.size, np.nan)
        one_t = timestamps[rows] + step_seconds
        keep = one_t <= t_hi
        if horizon and np.any(np.isfinite(one[keep])):
            ax1.plot(
                _to_datetimes(one_t[keep]), one[keep], color="tab:blue", lw=1.0, alpha=0.8, label="model, 1 step ahead"
            )

        issued = rows[np.all(np.isfinite(forecasts[rows]), axis=1)] if horizon else rows[:0]
        if issued.size:
            per_day = max(int(round(_DAY_SECONDS / step_seconds)), 1)
            span_steps = max(int(round((t_hi - t_lo) / step_seconds)), 1)
            every = max(per_day, int(math.ceil(span_steps / max(max_origins, 1))))
            # First issued origin, then the next issued origin at least `every` steps later, and so on.
            origins, next_t = [], -math.inf
            for i in issued:
                if timestamps[i] >= next_t:
                    origins.append(int(i))
                    next_t = timestamps[i] + every * step_seconds
                if len(origins) >= max_origins:
                    break
            colors = matplotlib.colormaps["autumn"](np.linspace(0.0, 0.8, max(len(origins), 1)))
            h = np.arange(1, horizon + 1)
            for k, i in enumerate(origins):
                path_t = np.concatenate([[timestamps[i]], timestamps[i] + h * step_seconds])
                path_v = np.concatenate([[values[i]], forecasts[i]])
                ax1.plot(
                    _to_datetimes(path_t),
                    path_v,
                    color=colors[k],
                    lw=1.6,
                    label=f"model, {horizon}-step path" if k == 0 else None,
                )
                ax1.plot(_to_datetimes(path_t[:1]), path_v[:1], "o", color=colors[k], ms=4)
        first = datetime.fromtimestamp(float(t_lo), tz=UTC).strftime("%Y-%m-%d %H:%M")
        last = datetime.fromtimestamp(float(t_hi), tz=UTC).strftime("%Y-%m-%d %H:%M")
        ax1.set_title(f"stream {stream_id}: test stretch {first} to {last} UTC ({rows.size} readings)")
    else:
        ax1.set_title(f"stream {stream_id}: no readings")
    _time_axes(ax1, mdates, unit)

    # Panel 2: MAE per horizon.
    h_axis = np.arange(1, int(report["horizon"]) + 1)
    for name, key, style in (
        ("model", "model", dict(color="tab:blue", lw=2.0)),
        ("persistence", "persistence", dict(color="tab:gray", lw=1.4, ls="--")),
        ("seasonal naive", "seasonal_naive", dict(color="tab:green", lw=1.4, ls="-.")),
    ):
        ax2.plot(h_axis, np.asarray(report[key]["mae"], dtype=np.float64), marker=".", label=name, **style)
    summary = report.get("summary", {})
    r1 = summary.get("mae_ratio_vs_persistence", math.nan)
    r2 = summary.get("mae_ratio_vs_seasonal_naive", math.nan)
    ax2.set_title(
        f"MAE per horizon, all streams ({report.get('test_points', 0)} forecast origins); "
        f"model/persistence {r1:.3f}, model/seasonal naive {r2:.3f}"
    )
    ax2.set_xlabel(f"horizon (steps of {step_txt})")
    ax2.set_ylabel(f"MAE{unit}")
    ax2.set_xlim(0.5, max(len(h_axis), 1) + 0.5)
    ax2.grid(True, alpha=0.3)
    ax2.legend(loc="upper left", fontsize="small")

    if fan:
        _fan_chart(
            ax3,
            timestamps,
            values,
            forecasts,
            np.asarray(lower),
            np.asarray(upper),
            interval_levels,
            rows,
            step_seconds,
            report,
            unit,
            mdates,
        )

    out = os.fspath(path)
    fig.savefig(out, format="png")
    return out


def _fan_chart(
    ax, timestamps, values, forecasts, lower, upper, levels, rows, step_seconds, report, unit, mdates
) -> None:
    """Panel 3: the last forecast of the stretch whose whole horizon has happened, with its intervals."""
    horizon = forecasts.shape[1]
    end = timestamps[rows[-1]] if rows.size else -math.inf
    issued = [i for i in rows if np.all(np.isfinite(forecasts[i])) and timestamps[i] + horizon * step_seconds <= end]
    if not issued:
        ax.set_title("fan chart: no forecast of the stretch has its whole horizon inside it")
        return
    origin = issued[-1]
    h = np.arange(1, horizon + 1)
    target_t = timestamps[origin] + h * step_seconds
    shown = (timestamps >= timestamps[origin] - 2 * horizon * step_seconds) & (timestamps <= target_t[-1])
    ax.plot(_to_datetimes(timestamps[shown]), values[shown], color="black", lw=1.4, label="actual")
    order = np.argsort(levels)[::-1]  # widest first, so narrower shades are drawn on top
    for rank, j in enumerate(order):
        ax.fill_between(
            _to_datetimes(target_t),
            lower[origin, j],
            upper[origin, j],
            color="tab:blue",
            alpha=0.18 + 0.22 * rank,
            lw=0,
            label=f"{levels[j]:.0%} interval",
        )
    ax.plot(_to_datetimes(target_t), forecasts[origin], color="tab:blue", lw=1.8, label="forecast")
    ax.axvline(_to_datetimes(timestamps[origin : origin + 1])[0], color="gray", lw=0.8, ls=":")
    coverage = report.get("summary", {}).get("interval_coverage", {})
    text = ", ".join(f"{float(k):.0%}: {v:.3f}" for k, v in coverage.items())
    issued_at = datetime.fromtimestamp(float(timestamps[origin]), tz=UTC).strftime("%Y-%m-%d %H:%M")
    ax.set_title(
        f"fan chart: forecast issued {issued_at} UTC; empirical coverage, all test points (mean over horizons): {text}"
    )
    _time_axes(ax, mdates, unit)


def _time_axes(ax, mdates, unit: str) -> None:
    """UTC date ticks, value label, grid and legend of a panel drawn against time."""
    locator = mdates.AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel(f"value{unit}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
