"""The local demo behind ``make run``: broker, streaming job, a steady replay and a live terminal view.

Everything it starts is stopped on Ctrl-C (or SIGTERM): the replay thread, the ``serve`` subprocess
(SIGTERM, so it drains and commits) and the embedded broker.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.broker import EmbeddedBroker, free_port
from pipeline.kafka_config import KafkaSettings, client_kwargs
from pipeline.topics import ensure_topics

READINGS, FORECASTS, DEAD_LETTERS = "readings", "forecasts", "readings-dlq"


@dataclass
class LiveCounts:
    """What the terminal view shows, updated by the topic watcher."""

    published: int = 0
    forecasts: int = 0
    dead_letters: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    latest: dict[str, dict] = field(default_factory=dict)
    history: deque = field(default_factory=lambda: deque(maxlen=6))  # (time, published, forecasts)


def run_demo(
    artifact: Path, data: Path, rate: float, streams_multiply: int, metrics_port: int, duration: float | None
) -> int:
    from models.data import load_csv
    from pipeline.replay import publish_readings, readings_from_dataset

    dataset = load_csv(data)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EmbeddedBroker() as broker:
        settings = KafkaSettings(bootstrap=broker.bootstrap)
        ensure_topics(settings, {READINGS: 4, FORECASTS: 4, DEAD_LETTERS: 1})
        metrics_port = metrics_port or free_port()
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "serve",
                "--artifact",
                str(artifact),
                "--bootstrap",
                broker.bootstrap,
                "--metrics-port",
                str(metrics_port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(_log_path(), "w"),
        )
        counts = LiveCounts()

        def replay() -> None:
            def on_progress(n: int) -> None:
                counts.published += n
                if stop.is_set():
                    raise KeyboardInterrupt

            try:
                publish_readings(
                    settings,
                    READINGS,
                    readings_from_dataset(dataset, streams_multiply),
                    rate=rate,
                    covariate_names=dataset.covariate_names,
                    progress=on_progress,
                )
            except KeyboardInterrupt:
                pass

        threading.Thread(target=replay, name="replay", daemon=True).start()
        watcher = threading.Thread(target=_watch_topics, args=(settings, counts, stop), name="watch", daemon=True)
        watcher.start()
        started = time.monotonic()
        try:
            while not stop.is_set():
                if serve.poll() is not None:
                    print(f"\nserve exited with status {serve.returncode}; see {_log_path()}", file=sys.stderr)
                    return 1
                _draw(counts, broker.bootstrap, metrics_port, time.monotonic() - started)
                if duration is not None and time.monotonic() - started > duration:
                    break
                stop.wait(1.0)
        finally:
            stop.set()
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.kill()
            print(f"\nstopped: replay, serve (exit {serve.returncode}), broker")
    return 0


def _log_path() -> Path:
    path = Path("runs") / "serve.log"
    path.parent.mkdir(exist_ok=True)
    return path


def _watch_topics(settings: KafkaSettings, counts: LiveCounts, stop: threading.Event) -> None:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        group_id=None, enable_auto_commit=False, auto_offset_reset="earliest", **client_kwargs(settings)
    )
    parts = [TopicPartition(t, p) for t in (FORECASTS, DEAD_LETTERS) for p in (consumer.partitions_for_topic(t) or ())]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    while not stop.is_set():
        for tp, records in consumer.poll(timeout_ms=500).items():
            for record in records:
                try:
                    message = json.loads(record.value)
                except ValueError:
                    continue
                if tp.topic == FORECASTS:
                    counts.forecasts += 1
                    counts.latest[message.get("stream_id", "?")] = message
                else:
                    counts.dead_letters += 1
                    reason = message.get("reason", "?")
                    counts.reasons[reason] = counts.reasons.get(reason, 0) + 1
    consumer.close()


def _draw(counts: LiveCounts, bootstrap: str, metrics_port: int, elapsed: float) -> None:
    now = time.monotonic()
    counts.history.append((now, counts.published, counts.forecasts))
    t0, p0, f0 = counts.history[0]
    span = max(now - t0, 1e-9)
    lines = [
        "rnncast demo  (Ctrl-C stops everything)",
        f"broker {bootstrap}   metrics http://127.0.0.1:{metrics_port}/metrics   log {_log_path()}   {elapsed:5.0f} s",
        "",
        f"readings published {counts.published:9d}   {(counts.published - p0) / span:8.0f}/s",
        f"forecasts          {counts.forecasts:9d}   {(counts.forecasts - f0) / span:8.0f}/s",
        f"dead letters       {counts.dead_letters:9d}   {dict(sorted(counts.reasons.items()))}",
        "",
        "latest forecasts (first 6 of H steps):",
    ]
    for stream_id in sorted(counts.latest)[:4]:
        message = counts.latest[stream_id]
        values = " ".join(f"{v:7.3f}" for v in message.get("forecast", [])[:6])
        lines.append(f"  {stream_id:16s} at {message.get('timestamp', '?')}: {values} ...")
    sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n" if sys.stdout.isatty() else "\n".join(lines[3:6]) + "\n")
    sys.stdout.flush()
