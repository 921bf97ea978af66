"""The local Flink cluster (``rnncast flink-cluster``) and Beam pipelines on it, no mocks.

The cluster is started once per module through the project's own command line (a subprocess in its own
session), with 2 TaskManagers x 1 slot on free loopback ports; its pieces come from ``make flink`` and a
missing piece FAILS the tests with that command. SIGTERM must stop every process it started.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.flink_cluster import MissingPieces, check_pieces, descendants, is_alive

REPO = Path(__file__).resolve().parents[1]
READY = "flink ready: "


class ClusterProcess:
    """``rnncast flink-cluster`` as a subprocess; ``options`` are the Beam options of its ready line."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.stdout_path = workdir / "cluster.out"
        self.stderr_path = workdir / "cluster.err"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pipeline.cli",
                    "flink-cluster",
                    "--rest-port",
                    "0",
                    "--workdir",
                    str(workdir),
                    *args,
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.options: list[str] = []

    def wait_ready(self, timeout: float = 240.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stdout_path.read_text()
            if READY in text:
                line = next(line for line in text.splitlines() if line.startswith(READY))
                self.options = shlex.split(line[len(READY) :])
                return self.options
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"flink-cluster exited with {self.proc.returncode}:\n{self.stderr_path.read_text()[-3000:]}"
                )
            time.sleep(0.25)
        raise TimeoutError(f"flink-cluster not ready in {timeout:g}s:\n{self.stderr_path.read_text()[-3000:]}")

    def option(self, name: str) -> str:
        return next(o.split("=", 1)[1] for o in self.options if o.startswith(f"--{name}="))

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise


@pytest.fixture(scope="module")
def flink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    try:
        check_pieces()
    except MissingPieces as err:
        pytest.fail(str(err))
    cluster = ClusterProcess(tmp_path_factory.mktemp("flink"))
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


def test_the_ready_line_names_every_option_serve_needs(flink: ClusterProcess) -> None:
    import json
    import urllib.request

    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(flink.options)
    assert options.view_as(StandardOptions).runner == "FlinkRunner"
    assert flink.option("environment_type") == "PROCESS"
    assert Path(json.loads(flink.option("environment_config"))["command"]).is_file()
    assert flink.option("parallelism") == "2"
    master = flink.option("flink_master")
    assert master.startswith("127.0.0.1:")
    with urllib.request.urlopen(f"http://{master}/overview", timeout=10) as response:
        overview = json.loads(response.read())
    assert overview["taskmanagers"] == 2 and overview["slots-total"] == 2
    assert flink.option("job_endpoint").startswith("127.0.0.1:")


def test_a_beam_python_pipeline_runs_on_two_taskmanagers(flink: ClusterProcess, tmp_path: Path) -> None:
    """A GroupByKey over 2 TaskManagers: the right sums, computed by SDK workers the TaskManagers started."""
    out = tmp_path / "sums.txt"
    script = tmp_path / "pipeline.py"
    script.write_text(
        "import os, sys\n"
        "import apache_beam as beam\n"
        "from apache_beam.options.pipeline_options import PipelineOptions\n"
        "out = sys.argv[1]\n"
        "def write(kv):\n"
        "    with open(out, 'a') as f:\n"
        "        f.write(f'{kv[0]} {kv[1]} {os.getpid()}\\n')\n"
        "with beam.Pipeline(options=PipelineOptions(sys.argv[2:])) as p:\n"
        "    (p | beam.Create(list(range(100))) | beam.Map(lambda x: (x % 3, x)) | beam.GroupByKey()\n"
        "       | beam.MapTuple(lambda k, v: (k, sum(v))) | beam.Map(write))\n"
    )
    run = subprocess.run(
        [sys.executable, str(script), str(out), *flink.options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split() for line in out.read_text().splitlines()]
    assert sorted((int(k), int(s)) for k, s, _ in rows) == [
        (k, sum(x for x in range(100) if x % 3 == k)) for k in range(3)
    ]
    worker_pids = {int(pid) for *_, pid in rows}
    assert os.getpid() not in worker_pids and run.returncode == 0  # computed outside the launcher


def test_sigterm_stops_every_process_it_started(tmp_path: Path) -> None:
    try:
        check_pieces()
    except MissingPieces as err:
        pytest.fail(str(err))
    cluster = ClusterProcess(tmp_path, "--taskmanagers", "1")
    try:
        cluster.wait_ready()
        started = descendants(cluster.proc.pid)
        assert len(started) >= 3  # JobManager, TaskManager, job server
    finally:
        status = cluster.stop()
    assert status == 0, cluster.stderr_path.read_text()[-2000:]
    assert [pid for pid in started if is_alive(pid)] == []


def test_missing_pieces_are_a_one_line_error_naming_make_flink(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), RNNCAST_CACHE=str(tmp_path / "empty"))
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "flink-cluster", "--rest-port", "0", "--workdir", str(tmp_path / "w")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "make flink" in run.stderr and len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_the_serve_contract_holds_on_flink_with_parallelism_2(broker, flink: ClusterProcess, tmp_path: Path) -> None:
    """tests/test_serve_e2e.py's contract, on 2 TaskManagers: the same forecasts, dead letters and counts.

    /metrics is the sum over the SDK workers' own endpoints (each registered for Prometheus' file
    discovery); SIGTERM cancels the job on the cluster after every offset was committed.
    """
    import serve_harness as h

    h.serve_contract(
        broker.bootstrap,
        h.trained_artifact(),
        tmp_path,
        rows=150,
        streams=10,
        more_rows=20,
        extra=flink.options,
        worker_metrics=True,
    )
    flink_jobs = _flink_jobs(flink.option("flink_master"))
    assert [job for job in flink_jobs if job["state"] == "RUNNING"] == []
    assert any(job["name"].startswith("rnncast-g-") and job["state"] == "CANCELED" for job in flink_jobs)


def _flink_jobs(master: str) -> list[dict]:
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://{master}/jobs/overview", timeout=10) as response:
        return json.loads(response.read())["jobs"]


def test_a_taskmanager_killed_mid_stream_loses_no_forecast(broker, tmp_path: Path, record_property) -> None:
    """SIGKILL one of 2 TaskManagers (2 slots each, parallelism 2) with its SDK workers while readings flow:
    Flink restores the job from its last checkpoint on the other TaskManager, and at the end no forecast
    is missing and none differs from the uninterrupted offline run. Duplicates are reported."""
    import uuid

    from models.artifact import load_artifact

    import serve_harness as h

    try:
        check_pieces()
    except MissingPieces as err:
        pytest.fail(str(err))
    (tmp_path / "cluster").mkdir()
    cluster = ClusterProcess(tmp_path / "cluster", "--slots", "2", "--checkpoint-interval", "2")
    artifact = h.trained_artifact()
    served = load_artifact(artifact)
    readings, data_covariates = h.dataset_readings(200, 10)
    reference = h.offline_forecasts(artifact, readings, served.features.covariate_names, data_covariates)
    suffix = uuid.uuid4().hex[:8]
    topics = {
        "input_topic": f"r-{suffix}",
        "output_topic": f"f-{suffix}",
        "dlq_topic": f"d-{suffix}",
        "group": f"g-{suffix}",
    }
    job = None
    try:
        options = cluster.wait_ready()
        options = [o for o in options if not o.startswith("--parallelism=")] + ["--parallelism=2"]
        job = h.ServeProcess(
            h.serve_args(artifact, broker.bootstrap, **topics, extra=["--topic-partitions", "4", *options]),
            tmp_path / "serve.log",
        )
        job.metrics_url()
        producer = h.PacedProducer(
            broker.bootstrap, topics["input_topic"], [h.reading_message(r, data_covariates) for r in readings], rate=40
        )
        producer.start()
        # Kill once forecasts flow and a checkpoint exists, while readings are still being published.
        h.wait_for(
            lambda: len(h.read_records(broker.bootstrap, topics["output_topic"], timeout=5)) >= 100,
            180,
            interval=1.0,
            what="forecasts before the kill",
        )
        victim = next(pid for pid in descendants(cluster.proc.pid) if "taskmanager-0" in _cmdline(pid))
        doomed = [victim, *descendants(victim)]
        for pid in doomed:
            os.kill(pid, signal.SIGKILL)
        killed_at = producer.sent
        producer.finish(timeout=300)
        forecasts = h.forecast_docs(
            h.read_records(broker.bootstrap, topics["output_topic"], at_least=len(reference), timeout=300, settle=3.0)
        )
        result = h.compare(forecasts, reference)
        record_property(
            "flink_failover",
            {
                "killed_after_published": killed_at,
                "duplicates": result["duplicates"],
                "forecasts": len(forecasts),
                "expected": len(reference),
            },
        )
        assert result["missing"] == [] and result["unexpected"] == [], {
            k: v for k, v in result.items() if k != "missing"
        }
        assert result["differing"] == 0 and result["max_diff"] <= 1e-6, result
        assert job.stop() == 0, job.log[-3000:]
    finally:
        if job is not None and job.alive():
            job.kill()
        cluster.stop()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""
