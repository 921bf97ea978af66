"""pipeline.metrics: every metric on an isolated registry, label hygiene, and the /metrics server."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from models.metrics import horizon_band
from pipeline import metrics as m


@pytest.fixture
def jm() -> m.JobMetrics:
    return m.JobMetrics(CollectorRegistry())


def value(jm: m.JobMetrics, name: str, **labels: str) -> float | None:
    return jm.registry.get_sample_value(name, labels)


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Names as written in PromQL (counters with _total, histograms by base name)."""
    names = set()
    for family in registry.collect():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_registry_exports_exactly_metric_names(jm):
    assert exported_names(jm.registry) == set(m.METRIC_NAMES)
    for family in jm.registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        assert m.METRIC_TYPES[name] == family.type
    assert all(name.startswith("rnncast_") for name in m.METRIC_NAMES)


def test_two_isolated_instances_do_not_clash_or_share_counts():
    a, b = m.JobMetrics(CollectorRegistry()), m.JobMetrics(CollectorRegistry())
    a.readings.inc(3)
    assert value(a, "rnncast_readings_total") == 3
    assert value(b, "rnncast_readings_total") == 0


def test_registering_twice_on_one_registry_fails():
    registry = CollectorRegistry()
    m.JobMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        m.JobMetrics(registry)


def test_counters_increment(jm):
    jm.readings.inc()
    jm.readings.inc(4)
    jm.forecasts.inc()
    jm.imputed_steps.inc(2)
    jm.state_expired.inc()
    jm.restored_streams.inc(7)
    jm.skipped_replayed.inc(5)
    jm.dead_letter("not_json")
    jm.dead_letter("not_json")
    jm.stream_reset("gap")
    jm.model_swap("refused")
    assert value(jm, "rnncast_readings_total") == 5
    assert value(jm, "rnncast_forecasts_total") == 1
    assert value(jm, "rnncast_imputed_steps_total") == 2
    assert value(jm, "rnncast_state_expired_total") == 1
    assert value(jm, "rnncast_restored_streams_total") == 7
    assert value(jm, "rnncast_skipped_replayed_total") == 5
    assert value(jm, "rnncast_dead_letters_total", reason="not_json") == 2
    assert value(jm, "rnncast_dead_letters_total", reason="not_utf8") == 0
    assert value(jm, "rnncast_stream_resets_total", reason="gap") == 1
    assert value(jm, "rnncast_model_swaps_total", result="refused") == 1
    assert value(jm, "rnncast_model_swaps_total", result="loaded") == 0


def test_fixed_label_sets_are_preinitialised_at_zero(jm):
    assert len(m.DEAD_LETTER_REASONS) == 13
    assert set(m.DEAD_LETTER_REASONS) == set(m.DEAD_LETTER_MEANINGS)
    assert all(m.DEAD_LETTER_MEANINGS[r].strip() for r in m.DEAD_LETTER_REASONS)
    for reason in m.DEAD_LETTER_REASONS:
        assert value(jm, "rnncast_dead_letters_total", reason=reason) == 0, reason
    for reason in ("gap", "ttl", "model_swap"):
        assert value(jm, "rnncast_stream_resets_total", reason=reason) == 0
    for band in m.HORIZON_BANDS:
        for forecaster in ("model", "persistence"):
            assert value(jm, "rnncast_forecast_abs_error_count", horizon=band, model=forecaster) == 0


def test_unknown_label_values_are_refused(jm):
    with pytest.raises(ValueError):
        jm.dead_letter("bogus")
    with pytest.raises(ValueError):
        jm.stream_reset("bogus")
    with pytest.raises(ValueError):
        jm.model_swap("bogus")
    with pytest.raises(ValueError):
        jm.set_skill("le_2", 0.9)


def test_model_info_swap_leaves_exactly_one_series(jm):
    jm.set_model("lstm64", "v1")
    jm.set_model("gru32", "v2")
    jm.set_model("gru32", "v2")
    samples = [s for f in jm.registry.collect() if f.name == "rnncast_model_info" for s in f.samples]
    assert [(s.labels, s.value) for s in samples] == [({"model": "gru32", "version": "v2"}, 1.0)]


def test_gauges_and_histograms(jm):
    jm.active_streams.set(12)
    jm.set_partition(3, consumed_offset=1000, lag=25)
    jm.set_partition(3, consumed_offset=1010, lag=-1)  # end offset fetched before the position: clamp
    jm.forecast_latency.observe(0.004)
    jm.step_seconds.observe(30e-6)
    jm.set_skill("1", 0.8)
    assert value(jm, "rnncast_active_streams") == 12
    assert value(jm, "rnncast_consumed_offset", partition="3") == 1010
    assert value(jm, "rnncast_consumer_lag", partition="3") == 0
    assert value(jm, "rnncast_forecast_latency_seconds_bucket", le="0.005") == 1
    assert value(jm, "rnncast_forecast_latency_seconds_bucket", le="0.0025") == 0
    assert value(jm, "rnncast_step_seconds_bucket", le="5e-05") == 1
    assert value(jm, "rnncast_step_seconds_bucket", le="2.5e-05") == 0
    assert value(jm, "rnncast_model_skill", horizon="1") == 0.8
    assert m.LATENCY_BUCKETS[0] == 0.001 and m.LATENCY_BUCKETS[-1] == 30
    assert m.STEP_BUCKETS[0] == 1e-6 and m.STEP_BUCKETS[-1] == 0.1


@pytest.mark.parametrize(
    "horizon, expected",
    [
        (1, ["1"]),
        (2, ["1", "le_full"]),
        (4, ["1", "le_half", "le_full", "le_full"]),
        (8, ["1", "le_q", "le_half", "le_half", "le_full", "le_full", "le_full", "le_full"]),
        (48, ["1"] + ["le_q"] * 11 + ["le_half"] * 12 + ["le_full"] * 24),
    ],
)
def test_horizon_bands_are_disjoint_and_cover_every_step(horizon, expected):
    assert [horizon_band(h, horizon) for h in range(1, horizon + 1)] == expected


def test_horizon_band_rejects_steps_outside_the_horizon():
    for step, horizon in [(0, 4), (5, 4), (1, 0)]:
        with pytest.raises(ValueError):
            horizon_band(step, horizon)


def test_add_errors_records_model_and_persistence_by_band(jm):
    jm.add_errors(horizon_band(1, 48), "model", [-0.2])
    jm.add_errors(horizon_band(1, 48), "persistence", [0.6])
    jm.add_errors(horizon_band(40, 48), "model", [0.05])
    jm.add_errors(horizon_band(40, 48), "persistence", [-0.02])
    assert value(jm, "rnncast_forecast_abs_error_sum", horizon="1", model="model") == pytest.approx(0.2)
    assert value(jm, "rnncast_forecast_abs_error_sum", horizon="1", model="persistence") == pytest.approx(0.6)
    assert value(jm, "rnncast_forecast_abs_error_count", horizon="le_full", model="model") == 1
    assert value(jm, "rnncast_forecast_abs_error_count", horizon="le_q", model="model") == 0


def test_http_server_serves_parseable_text_on_an_ephemeral_port(jm):
    jm.readings.inc(2)
    jm.set_model("lstm64", "v1")
    jm.set_partition(0, 10, 4)
    jm.set_skill("le_q", 1.1)
    jm.set_interval("le_q", "0.8", 0.79, 1.25)
    jm.set_kafka_connected("source", True)
    with m.start_metrics_server(jm, host="127.0.0.1", port=0) as server:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(server.url, timeout=5) as response:
            assert response.status == 200
            text = response.read().decode()
    families = list(text_string_to_metric_families(text))
    sample_names = {s.name for f in families for s in f.samples}
    for name, kind in m.METRIC_TYPES.items():
        wanted = name + "_count" if kind == "histogram" else name
        assert wanted in sample_names, name
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    assert samples[("rnncast_readings_total", ())] == 2
    assert samples[("rnncast_dead_letters_total", (("reason", "duplicate"),))] == 0
    assert not any(name.startswith("python_gc") for name in sample_names)  # isolated, not the global one


def test_server_stop_releases_the_port(jm):
    server = m.start_metrics_server(jm, port=0)
    port = server.port
    server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_default_metrics_is_one_instance_on_the_global_registry():
    from prometheus_client import REGISTRY

    first = m.default_metrics()
    assert first is m.default_metrics()
    assert first.registry is REGISTRY


def test_bulk_latency_observations_equal_one_observe_each() -> None:
    import random

    rng = random.Random(7)
    values = [0.0, 0.001, 0.0025, 2.5, 1e9] + [rng.expovariate(20.0) for _ in range(500)]
    bounds = m.JobMetrics(CollectorRegistry()).forecast_latency._upper_bounds  # type: ignore[attr-defined]
    values += [b for b in bounds if b != float("inf")]  # exactly on a bound: that bucket, as observe does
    one, bulk = m.JobMetrics(CollectorRegistry()), m.JobMetrics(CollectorRegistry())
    for value in values:
        one.forecast_latency.observe(value)
    bulk.observe_forecast_latencies(values[:100])
    bulk.observe_forecast_latencies(values[100:])

    def samples(jm: m.JobMetrics) -> dict:
        (metric,) = list(jm.forecast_latency.collect())
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for s in metric.samples
            if not s.name.endswith("_created")
        }

    expected, got = samples(one), samples(bulk)
    total = ("rnncast_forecast_latency_seconds_sum", ())
    assert got.pop(total) == pytest.approx(expected.pop(total), rel=1e-12)
    assert got == expected and expected[("rnncast_forecast_latency_seconds_count", ())] == len(values)


def test_interval_gauges_carry_band_level_and_the_nominal_level(jm):
    jm.set_interval("le_half", "0.95", 0.93, 2.5)
    assert value(jm, "rnncast_interval_coverage", horizon="le_half", level="0.95") == 0.93
    assert value(jm, "rnncast_interval_width", horizon="le_half", level="0.95") == 2.5
    assert value(jm, "rnncast_interval_nominal", level="0.95") == 0.95
    with pytest.raises(ValueError, match="unknown horizon band"):
        jm.set_interval("le_2", "0.95", 0.9, 1.0)
