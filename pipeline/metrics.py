"""Every Prometheus metric the serving job exports, in one place (prefix ``rnncast_``).

Usage::

    metrics = JobMetrics()                      # production: the process-wide default registry
    server = start_metrics_server(metrics, host="0.0.0.0", port=9108)
    metrics.readings.inc()
    metrics.dead_letter("not_json")
    metrics.set_model("lstm64", "20261126T1708-3f2a")
    ...
    server.stop()

Tests create isolated instances: ``JobMetrics(CollectorRegistry())`` registers the same metrics on
a private registry, so two instances never clash and counters start at 0 in every test.

Why production uses the one global default registry (``prometheus_client.REGISTRY``): one serving
job runs per process and is scraped at one port, so one registry per process is exactly the model;
the default registry also carries the client's process and platform collectors (CPU, memory, file
descriptors, GC), which we want on the same scrape. Registering a second ``JobMetrics`` on the
default registry raises ``ValueError: Duplicated timeseries`` — use :func:`default_metrics` to get the
process-wide instance from any DoFn or thread.

Cardinality: no label carries a stream id. Labels take values from small fixed sets (reason codes,
horizon bands, result codes) or from the Kafka partition number (bounded by the topic's partition
count) and the single current model/version.

Label values of ``rnncast_forecast_abs_error{horizon, model}`` and ``rnncast_model_skill{horizon}``:

``horizon`` — disjoint bands of the forecast step ``h`` (1-based) for a model of horizon ``H``;
every step falls in exactly one band (see :func:`horizon_band`, the one definition in
:mod:`models.metrics`, shared with ``rnncast evaluate``'s band table and the online accuracy tracker), so
summing over bands gives all steps:

============  ======================================
``1``         ``h == 1`` (one step ahead)
``le_q``      ``1 < h <= ceil(H/4)``
``le_half``   ``ceil(H/4) < h <= ceil(H/2)``
``le_full``   ``ceil(H/2) < h <= H``
============  ======================================

(For a short horizon some bands are empty, e.g. ``H = 1`` uses only ``1``.)

``model`` — which forecaster made the error: ``model`` (the served recurrent network) or
``persistence`` (the last observed value repeated; the baseline the model must beat). Errors are
absolute errors in the stream's *scaled* units (value standardised by the stream's frozen scaler), so
streams of different magnitude are comparable and can share one histogram.

``rnncast_model_skill{horizon}`` = rolling model MAE / rolling persistence MAE for that band; below 1
the model beats persistence. It is not pre-initialised (0 would read as a perfect model); it appears
once the job has enough scored forecasts to compute it.

``rnncast_interval_coverage{horizon, level}`` = the rolling fraction of scored points (the last 1,000
per band and level) whose prediction interval of that level held the actual; ``rnncast_interval_width``
its mean width in scaled units; ``rnncast_interval_nominal{level}`` the level itself, so that rules can
compare (``level`` as the forecast messages write it: ``0.8``, ``0.95``). Served only when the artifact
has intervals; like the skill gauge they appear once there is something to report. A hot swap to a
model with other levels (or none) removes the series of the levels no longer served.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from models.metrics import HORIZON_BANDS

# --- fixed label value sets -------------------------------------------------------------------

DEAD_LETTER_MEANINGS: dict[str, str] = {
    "not_utf8": "the Kafka message value is not valid UTF-8",
    "not_json": "the value is not parseable JSON",
    "not_object": "the JSON is valid but not an object",
    "missing_field": "a required field (stream_id, timestamp, value) is absent",
    "bad_type": "a field has the wrong JSON type (e.g. value is a string)",
    "bad_value": "a numeric field is not finite (NaN, Infinity) or out of range",
    "too_large": "the message exceeds the size limit",
    "bad_stream_id": "stream_id is empty, too long or contains disallowed characters",
    "bad_timestamp": "timestamp is neither RFC 3339 nor epoch seconds",
    "future_timestamp": "timestamp is more than --max-future seconds after the stream's last reading (event time; the job never reads the clock)",
    "key_mismatch": "the Kafka message key differs from the payload's stream_id",
    "out_of_order": "timestamp is older than the stream's last accepted reading",
    "duplicate": "timestamp equals the stream's last accepted reading",
}
DEAD_LETTER_REASONS: tuple[str, ...] = tuple(DEAD_LETTER_MEANINGS)

RESET_REASONS: tuple[str, ...] = ("gap", "ttl", "model_swap")
SWAP_RESULTS: tuple[str, ...] = ("loaded", "refused")
FORECASTERS: tuple[str, ...] = ("model", "persistence")
# The job's librdkafka clients: the source's consumer and the sink's producer.
KAFKA_CLIENTS: tuple[str, ...] = ("source", "sink")

# --- buckets ----------------------------------------------------------------------------------

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STEP_BUCKETS = (
    1e-6,
    2.5e-6,
    5e-6,
    1e-5,
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    0.01,
    0.025,
    0.05,
    0.1,
)
ABS_ERROR_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)

# --- names ------------------------------------------------------------------------------------

# Names as written in PromQL: counters with their ``_total`` suffix, histograms by base name (they
# export ``_bucket``, ``_sum`` and ``_count`` series), gauges as is. The client also exports a
# ``_created`` series per counter/histogram; dashboards and rules don't use it.
METRIC_TYPES: dict[str, str] = {
    "rnncast_readings_total": "counter",
    "rnncast_forecasts_total": "counter",
    "rnncast_dead_letters_total": "counter",
    "rnncast_forecast_latency_seconds": "histogram",
    "rnncast_step_seconds": "histogram",
    "rnncast_active_streams": "gauge",
    "rnncast_model_info": "gauge",
    "rnncast_consumer_lag": "gauge",
    "rnncast_consumed_offset": "gauge",
    "rnncast_imputed_steps_total": "counter",
    "rnncast_stream_resets_total": "counter",
    "rnncast_state_expired_total": "counter",
    "rnncast_forecast_abs_error": "histogram",
    "rnncast_model_skill": "gauge",
    "rnncast_interval_coverage": "gauge",
    "rnncast_interval_width": "gauge",
    "rnncast_interval_nominal": "gauge",
    "rnncast_model_swaps_total": "counter",
    "rnncast_restored_streams_total": "counter",
    "rnncast_skipped_replayed_total": "counter",
    "rnncast_kafka_connected": "gauge",
    "rnncast_kafka_errors_total": "counter",
}
METRIC_NAMES: tuple[str, ...] = tuple(METRIC_TYPES)


def _counter(name: str, doc: str, registry: CollectorRegistry, labels: tuple[str, ...] = ()) -> Counter:
    # prometheus_client appends "_total" itself; pass the base name.
    assert name.endswith("_total")
    return Counter(name[: -len("_total")], doc, labels, registry=registry)


def _observe_many(histogram: Any, values: np.ndarray) -> None:
    """One ``histogram.observe`` per value, done as one count per bucket (~1 µs per ``observe`` saved).

    The same bucket counts as ``observe`` (a value lands in the first bucket whose bound is >= it;
    prometheus_client keeps buckets non-cumulative, the last is +Inf); the sum may differ in the last
    bits (summed in another order). Uses the pinned client's bucket values directly, and falls back to
    ``observe`` where they are not there.
    """
    bounds, buckets, total = (getattr(histogram, name, None) for name in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values.tolist():
            histogram.observe(value)
        return
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(buckets))
    total.inc(float(values.sum()))
    for bucket, count in zip(buckets, counts.tolist()):
        if count:
            bucket.inc(count)


class JobMetrics:
    """All metrics of one serving job, registered on ``registry`` (default: the global registry).

    Attributes are the prometheus_client metric objects; the methods below are conveniences that
    validate label values so a typo cannot create a new series.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = REGISTRY if registry is None else registry
        r = self.registry
        self.readings = _counter("rnncast_readings_total", "Readings accepted (decoded, valid, in order).", r)
        self.forecasts = _counter("rnncast_forecasts_total", "Forecasts published.", r)
        self.dead_letters = _counter(
            "rnncast_dead_letters_total", "Messages sent to the dead-letter topic, by reason code.", r, ("reason",)
        )
        self.forecast_latency = Histogram(
            "rnncast_forecast_latency_seconds",
            "Seconds from the reading's Kafka message timestamp to its forecast being published.",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.step_seconds = Histogram(
            "rnncast_step_seconds",
            "Wall seconds of the engine per reading, observed once per engine call (a round of readings of "
            "distinct streams stepped together).",
            registry=r,
            buckets=STEP_BUCKETS,
        )
        self.active_streams = Gauge("rnncast_active_streams", "Streams with live state in this job.", registry=r)
        self.model_info = Gauge(
            "rnncast_model_info", "1 for the model artifact currently served.", ("model", "version"), registry=r
        )
        self.consumer_lag = Gauge(
            "rnncast_consumer_lag",
            "Messages between the partition's end offset and the consumed position.",
            ("partition",),
            registry=r,
        )
        self.consumed_offset = Gauge(
            "rnncast_consumed_offset",
            "Next offset this job will read, per input partition.",
            ("partition",),
            registry=r,
        )
        self.imputed_steps = _counter(
            "rnncast_imputed_steps_total", "Missing steps filled with the model's own one-step forecast.", r
        )
        self.stream_resets = _counter(
            "rnncast_stream_resets_total",
            "Streams that restarted warm-up: gap (gap > max_gap), ttl (state expired), model_swap.",
            r,
            ("reason",),
        )
        self.state_expired = _counter(
            "rnncast_state_expired_total", "Stream states dropped after --state-ttl without readings.", r
        )
        self.forecast_abs_error = Histogram(
            "rnncast_forecast_abs_error",
            "Absolute forecast error in scaled units by horizon band (1, le_q, le_half, le_full) and "
            "forecaster (model, persistence).",
            ("horizon", "model"),
            registry=r,
            buckets=ABS_ERROR_BUCKETS,
        )
        self.model_skill = Gauge(
            "rnncast_model_skill",
            "Rolling model MAE / persistence MAE by horizon band; < 1 beats persistence.",
            ("horizon",),
            registry=r,
        )
        self.interval_coverage = Gauge(
            "rnncast_interval_coverage",
            "Rolling fraction of scored points inside their prediction interval, by horizon band and level.",
            ("horizon", "level"),
            registry=r,
        )
        self.interval_width = Gauge(
            "rnncast_interval_width",
            "Rolling mean prediction-interval width (scaled units), by horizon band and level.",
            ("horizon", "level"),
            registry=r,
        )
        self.interval_nominal = Gauge(
            "rnncast_interval_nominal",
            "Nominal coverage of each served prediction-interval level.",
            ("level",),
            registry=r,
        )
        self._interval_levels: set[str] = set()  # the levels with interval series, for keep_interval_levels
        self.model_swaps = _counter(
            "rnncast_model_swaps_total",
            "Model artifact swaps: loaded, or refused (failed validation).",
            r,
            ("result",),
        )
        self.restored_streams = _counter(
            "rnncast_restored_streams_total", "Stream states restored from a checkpoint after a restart.", r
        )
        self.skipped_replayed = _counter(
            "rnncast_skipped_replayed_total",
            "Readings skipped after a restart because the restored state already contains them.",
            r,
        )
        self.kafka_connected = Gauge(
            "rnncast_kafka_connected",
            "1 while the Kafka client (source: the consumer, sink: the producer) is connected to a broker, "
            "0 once it has lost them all (librdkafka's statistics every 5 s; errors at once).",
            ("client",),
            registry=r,
        )
        self.kafka_errors = _counter(
            "rnncast_kafka_errors_total",
            "Errors reported by the job's Kafka clients, by client and librdkafka error name (e.g. _TRANSPORT, "
            "_ALL_BROKERS_DOWN).",
            r,
            ("client", "code"),
        )
        self._model_lock = threading.Lock()

        # Pre-initialise fixed label sets so every series exists (at 0) from the first scrape:
        # rate() and alerts then see a 0 instead of "no data".
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason=reason)
        for reason in RESET_REASONS:
            self.stream_resets.labels(reason=reason)
        for result in SWAP_RESULTS:
            self.model_swaps.labels(result=result)
        for band in HORIZON_BANDS:
            for forecaster in FORECASTERS:
                self.forecast_abs_error.labels(horizon=band, model=forecaster)
        for client in KAFKA_CLIENTS:
            for code in ("_TRANSPORT", "_ALL_BROKERS_DOWN"):
                self.kafka_errors.labels(client=client, code=code)

    # --- conveniences ---------------------------------------------------------------------------

    def dead_letter(self, reason: str, amount: float = 1) -> None:
        if reason not in DEAD_LETTER_MEANINGS:
            raise ValueError(f"unknown dead-letter reason {reason!r}")
        self.dead_letters.labels(reason=reason).inc(amount)

    def stream_reset(self, reason: str, amount: float = 1) -> None:
        if reason not in RESET_REASONS:
            raise ValueError(f"unknown reset reason {reason!r}")
        self.stream_resets.labels(reason=reason).inc(amount)

    def model_swap(self, result: str) -> None:
        if result not in SWAP_RESULTS:
            raise ValueError(f"unknown swap result {result!r}")
        self.model_swaps.labels(result=result).inc()

    def set_model(self, model: str, version: str) -> None:
        """Mark (model, version) as served: removes every other label set, so exactly one series is 1."""
        with self._model_lock:
            self.model_info.clear()
            self.model_info.labels(model=model, version=version).set(1)

    def observe_forecast_latencies(self, seconds: Sequence[float]) -> None:
        """``forecast_latency.observe`` of each value, for a bundle's forecasts at once (see :func:`_observe_many`)."""
        _observe_many(self.forecast_latency, np.asarray(seconds, dtype=np.float64))

    def set_partition(self, partition: int, consumed_offset: int, lag: int) -> None:
        label = str(partition)
        self.consumed_offset.labels(partition=label).set(consumed_offset)
        self.consumer_lag.labels(partition=label).set(max(lag, 0))

    def add_errors(self, band: str, forecaster: str, errors: Sequence[float]) -> None:
        """Records many |errors| (scaled units) in ``rnncast_forecast_abs_error{horizon=band, model=forecaster}``.

        The same as one ``observe`` per error, done as one bucket count per bucket (the online accuracy
        monitor records a few thousand errors a second).
        """
        if band not in HORIZON_BANDS or forecaster not in FORECASTERS:
            raise ValueError(f"unknown horizon band {band!r} or forecaster {forecaster!r}")

        errors = np.abs(np.asarray(errors, dtype=np.float64))
        if errors.size:
            _observe_many(self.forecast_abs_error.labels(horizon=band, model=forecaster), errors)

    def set_interval(self, band: str, level: str, coverage: float, width: float) -> None:
        """Rolling coverage and mean width of the ``level`` intervals (as :func:`models.intervals.level_key` names it) in ``band``."""
        if band not in HORIZON_BANDS:
            raise ValueError(f"unknown horizon band {band!r}")
        self.interval_nominal.labels(level=level).set(float(level))
        self.interval_coverage.labels(horizon=band, level=level).set(coverage)
        self.interval_width.labels(horizon=band, level=level).set(width)
        self._interval_levels.add(level)

    def keep_interval_levels(self, levels: Iterable[str]) -> None:
        """Removes the interval series of every level not in ``levels`` (the served model's, after a swap).

        Without this a level the new model does not serve would keep exporting its last coverage, and
        the under-coverage alert would keep judging it.
        """
        for level in sorted(self._interval_levels - set(levels)):
            for band in HORIZON_BANDS:
                self.interval_coverage.remove(band, level)
                self.interval_width.remove(band, level)
            self.interval_nominal.remove(level)
            self._interval_levels.discard(level)

    def set_kafka_connected(self, client: str, connected: bool) -> None:
        if client not in KAFKA_CLIENTS:
            raise ValueError(f"unknown Kafka client {client!r}")
        self.kafka_connected.labels(client=client).set(1 if connected else 0)

    def kafka_error(self, client: str, code: str) -> None:
        if client not in KAFKA_CLIENTS:
            raise ValueError(f"unknown Kafka client {client!r}")
        self.kafka_errors.labels(client=client, code=code).inc()

    def set_skill(self, band: str, skill: float) -> None:
        if band not in HORIZON_BANDS:
            raise ValueError(f"unknown horizon band {band!r}")
        self.model_skill.labels(horizon=band).set(skill)


_default: JobMetrics | None = None
_default_lock = threading.Lock()
_worker_server: MetricsServer | None = None


def default_metrics() -> JobMetrics:
    """The process-wide :class:`JobMetrics` on the default registry, created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = JobMetrics()
        return _default


@dataclass
class MetricsServer:
    """A running /metrics HTTP server; ``port`` is the bound port (useful when 0 was asked for)."""

    host: str
    port: int
    _httpd: object = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_metrics_server(metrics: JobMetrics, host: str = "127.0.0.1", port: int = 9108) -> MetricsServer:
    """Serve ``metrics.registry`` at http://host:port/metrics from a daemon thread (port 0: any free port).

    The default host is loopback; in a container pass ``0.0.0.0`` so Prometheus can reach it.
    """
    httpd, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsServer(host=host, port=httpd.server_address[1], _httpd=httpd, _thread=thread)


@dataclass(frozen=True)
class WorkerMetrics:
    """The metrics factory of the job's DoFns on a distributed runner: each worker process serves its own /metrics.

    On Flink (or any runner whose SDK workers are other processes) the DoFns count in the worker's
    process-wide :class:`JobMetrics`, which the launcher's /metrics never sees. The first call in a
    worker process starts a /metrics server there (``host``, a free port) and writes a Prometheus
    file-based service discovery file, ``<targets_dir>/rnncast-worker-<pid>.json``, so Prometheus
    (``file_sd_configs``) and tests find every worker (:func:`worker_targets`). Picklable: it travels
    inside the DoFns.

    Attributes:
        host: Interface of the workers' /metrics servers (--metrics-host).
        targets_dir: Where the discovery files go (a directory every worker can write: one machine,
            or a shared volume).
    """

    host: str
    targets_dir: str

    def __call__(self) -> JobMetrics:
        global _worker_server
        metrics = default_metrics()
        with _default_lock:
            if _worker_server is None:
                import json
                import os
                from pathlib import Path

                _worker_server = start_metrics_server(metrics, host=self.host, port=0)
                target = (
                    f"{self.host}:{_worker_server.port}"
                    if ":" not in self.host
                    else f"[{self.host}]:{_worker_server.port}"
                )
                directory = Path(self.targets_dir)
                directory.mkdir(parents=True, exist_ok=True)
                path = directory / f"rnncast-worker-{os.getpid()}.json"
                temporary = path.with_suffix(".tmp")
                temporary.write_text(json.dumps([{"targets": [target], "labels": {"worker_pid": str(os.getpid())}}]))
                temporary.replace(path)  # Prometheus never reads a half-written file
        return metrics


def worker_targets(targets_dir: str) -> list[str]:
    """The /metrics URLs of the workers that registered in ``targets_dir`` (see :class:`WorkerMetrics`)."""
    import json
    from pathlib import Path

    urls = []
    for path in sorted(Path(targets_dir).glob("rnncast-worker-*.json")):
        try:
            groups = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        urls.extend(f"http://{target}/metrics" for group in groups for target in group["targets"])
    return urls


def clear_worker_targets(targets_dir: str) -> None:
    """Removes the discovery files of :class:`WorkerMetrics` from ``targets_dir`` (and the directory, once empty)."""
    from pathlib import Path

    directory = Path(targets_dir)
    for path in directory.glob("rnncast-worker-*.json"):
        path.unlink(missing_ok=True)
    try:
        directory.rmdir()  # only if nothing else is in it
    except OSError:
        pass
