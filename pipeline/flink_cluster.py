"""A local Apache Flink session cluster for the Beam job: JobManager, TaskManagers, Beam's job server.

What runs (no Docker, loopback only, small heaps), all children of this process:

* ``StandaloneSessionClusterEntrypoint`` (the JobManager, REST on ``rest_port``);
* ``TaskManagerRunner`` x ``taskmanagers``, ``slots`` each;
* Beam's ``FlinkJobServerDriver`` (the portable job service the Python SDK submits to);
* the Python SDK harness, ``--environment_type=PROCESS``: each TaskManager starts Beam's Go ``boot``
  entrypoint, which starts ``python -m apache_beam.runners.worker.sdk_worker_main`` from this
  project's virtualenv. So a TaskManager's SDK workers belong to it (they die with it), unlike one
  shared EXTERNAL worker pool that every TaskManager would have to be pointed at by one address.

The pieces are fetched by ``make flink`` (scripts/fetch_flink.sh) into :func:`pieces_dir`; the pins
are here. Maven Central serves Beam's Flink runner only up to 2.70.0 and its job-service module
only up to 2.65.0 (2.62.0 is the newest release with both): the job server is Beam 2.62.0 for Flink
1.19, shaded from those artifacts; the Python SDK stays 2.77.0 (the portable protocol is
versioned, and the job runs through it: tests/test_flink.py).

``python -m pipeline.flink_cluster pins`` prints the pins as shell assignments (for the fetch script).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BEAM_BOOT_VERSION",
    "BEAM_JOB_SERVER_VERSION",
    "FLINK_VERSION",
    "FlinkCluster",
    "FlinkClusterError",
    "MissingPieces",
    "cancel_job",
    "descendants",
    "is_alive",
    "pieces_dir",
]

log = logging.getLogger(__name__)

BEAM_JOB_SERVER_VERSION = "2.62.0"
FLINK_VERSION = "1.19.3"
FLINK_MINOR = "1.19"
FLINK_SDIST_SHA256 = "4a58e3a1fb7d83340bc96b6c080624c6d792d69fae5d294b96224775204a9c60"
BEAM_BOOT_VERSION = "2.77.0"  # the Python SDK's version: boot and SDK talk through the SDK's own files

# Flink and Beam reflect into JDK internals; Java 17 refuses that unless the packages are opened.
JAVA_OPENS = tuple(
    f"--add-opens=java.base/{package}=ALL-UNNAMED"
    for package in (
        "java.lang",
        "java.lang.reflect",
        "java.lang.invoke",
        "java.io",
        "java.net",
        "java.nio",
        "java.text",
        "java.time",
        "java.util",
        "java.util.concurrent",
        "java.util.concurrent.atomic",
        "sun.nio.ch",
    )
)
_MAKE = "make flink"
_REPO = Path(__file__).resolve().parents[1]


class FlinkClusterError(RuntimeError):
    """A daemon of the cluster failed to start or died."""


class MissingPieces(FlinkClusterError):
    """``make flink`` has not fetched the job server, the Flink distribution or Beam's boot."""


def pieces_dir() -> Path:
    """Where ``make flink`` puts the pinned pieces (``$RNNCAST_CACHE``, default ``~/.cache/rnncast``)."""
    cache = Path(os.environ.get("RNNCAST_CACHE") or Path.home() / ".cache" / "rnncast")
    return cache / f"flink-{FLINK_VERSION}-beam-{BEAM_JOB_SERVER_VERSION}"


def job_server_jar(pieces: Path | None = None) -> Path:
    return (
        (pieces or pieces_dir())
        / "job-server"
        / f"beam-runners-flink-{FLINK_MINOR}-job-server-{BEAM_JOB_SERVER_VERSION}.jar"
    )


def boot_binary(pieces: Path | None = None) -> Path:
    return (pieces or pieces_dir()) / "bin" / "boot"


def check_pieces(pieces: Path | None = None) -> Path:
    """Returns the pieces directory.

    Raises:
        MissingPieces: If ``make flink`` has not completed there.
    """
    pieces = pieces or pieces_dir()
    missing = [
        str(path)
        for path in (pieces / "READY", job_server_jar(pieces), boot_binary(pieces), pieces / "flink" / "lib")
        if not path.exists()
    ]
    if missing:
        raise MissingPieces(f"the Flink cluster's pieces are missing ({', '.join(missing)}): run `{_MAKE}`")
    return pieces


@dataclass
class _Daemon:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class FlinkCluster:
    """Starts and stops the cluster (see the module docstring); :meth:`beam_options` is what ``serve`` needs.

    Attributes:
        workdir: Configuration, logs, checkpoints and the job server's artifacts go here.
        taskmanagers: TaskManagers to start.
        slots: Task slots per TaskManager.
        rest_port: The JobManager's REST port (0: a free one).
        checkpoint_interval_ms: Flink checkpoints the Beam state this often (``--checkpointing_interval``).
        python: The interpreter of the SDK workers (it must import this project).
    """

    workdir: Path
    taskmanagers: int = 2
    slots: int = 1
    rest_port: int = 8081
    checkpoint_interval_ms: int = 5000
    python: str = sys.executable
    pieces: Path = field(default_factory=pieces_dir)
    _daemons: list[_Daemon] = field(default_factory=list, init=False)
    job_port: int = field(default=0, init=False)

    # --- what serve needs ---------------------------------------------------------------------

    @property
    def flink_master(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.flink_master}"

    def beam_options(self) -> list[str]:
        """The Beam options of a job on this cluster (the job server's endpoint, the SDK environment)."""
        return [
            "--runner=FlinkRunner",
            f"--flink_master={self.flink_master}",
            f"--flink_version={FLINK_MINOR}",
            f"--job_endpoint=127.0.0.1:{self.job_port}",
            "--environment_type=PROCESS",
            "--environment_config=" + json.dumps({"command": str(boot_binary(self.pieces))}, separators=(",", ":")),
            f"--parallelism={self.taskmanagers * self.slots}",
            f"--checkpointing_interval={self.checkpoint_interval_ms}",
            # Without it the job server's Flink operators (Beam 2.62) left the SDK bundle that was open
            # at a checkpoint unfinished: with checkpointing on, streaming pipelines here (the job, and
            # a Create + GroupByKey) mostly stalled after their first element (deploy/flink/README.md).
            "--finish_bundle_before_checkpointing",
        ]

    def ready_line(self) -> str:
        return "flink ready: " + " ".join(shlex.quote(option) for option in self.beam_options())

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> FlinkCluster:
        """Starts every daemon and waits until the TaskManagers' slots are registered and the job port answers.

        Raises:
            MissingPieces: See :func:`check_pieces`.
            FlinkClusterError: If a daemon exits or the cluster is not ready within ``timeout``.
        """
        from pipeline.broker import free_port

        check_pieces(self.pieces)
        deadline = time.monotonic() + timeout
        if self.rest_port == 0:
            self.rest_port = free_port()
        self.job_port = free_port()
        conf = self._write_conf(free_port())
        try:
            self._spawn(
                "jobmanager", "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint", conf, "256m"
            )
            self._wait(lambda: self._rest("/overview") is not None, deadline, "the JobManager's REST API")
            for i in range(self.taskmanagers):
                self._spawn(f"taskmanager-{i}", "org.apache.flink.runtime.taskexecutor.TaskManagerRunner", conf, "320m")
            want = self.taskmanagers * self.slots
            self._wait(
                lambda: (self._rest("/overview") or {}).get("slots-total", 0) >= want,
                deadline,
                f"{self.taskmanagers} TaskManagers with {want} slots",
            )
            self._spawn_job_server()
            self._wait(lambda: _port_open(self.job_port), deadline, "Beam's job server")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to every daemon and its descendants (job server first), SIGKILL what is left after ``timeout``."""
        daemons, self._daemons = list(reversed(self._daemons)), []
        everyone: list[int] = []
        for daemon in daemons:
            everyone.extend([daemon.proc.pid, *descendants(daemon.proc.pid)])
        for pid in everyone:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for daemon in daemons:
            try:
                daemon.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        while time.monotonic() < deadline and any(is_alive(pid) for pid in everyone):
            time.sleep(0.1)
        for pid in everyone:
            _signal(pid, signal.SIGKILL)
        for daemon in daemons:
            daemon.proc.wait()

    def exited(self) -> list[_Daemon]:
        """The daemons that exited."""
        return [d for d in self._daemons if d.proc.poll() is not None]

    def dead(self, *, taskmanagers: bool = True) -> _Daemon | None:
        """The first daemon that exited, if any (with ``taskmanagers=False``: the JobManager or the job server).

        A lost TaskManager is Flink's to handle (its jobs restart from their last checkpoint on the
        slots left); without the JobManager or the job server there is no cluster.
        """
        return next((d for d in self.exited() if taskmanagers or not d.name.startswith("taskmanager-")), None)

    def __enter__(self) -> FlinkCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals ----------------------------------------------------------------------------

    def _write_conf(self, rpc_port: int) -> Path:
        conf = self.workdir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        for name in ("log", "tmp", "checkpoints", "savepoints", "artifacts"):
            (self.workdir / name).mkdir(exist_ok=True)
        settings = {
            "jobmanager.rpc.address": "127.0.0.1",
            "jobmanager.rpc.port": rpc_port,
            "jobmanager.bind-host": "127.0.0.1",
            "taskmanager.bind-host": "127.0.0.1",
            "taskmanager.host": "127.0.0.1",
            "rest.address": "127.0.0.1",
            "rest.bind-address": "127.0.0.1",
            "rest.port": self.rest_port,
            "taskmanager.numberOfTaskSlots": self.slots,
            # TaskManagerRunner, started without Flink's bin scripts, needs its resources spelled out.
            "taskmanager.cpu.cores": float(self.slots),
            "parallelism.default": 1,
            "cluster.evenly-spread-out-slots": "true",  # a job of parallelism 2 uses both TaskManagers
            # Small memory: 2 shared cores, and the SDK workers (Python) hold the job's working set.
            "jobmanager.memory.heap.size": "256m",
            "jobmanager.memory.off-heap.size": "64m",
            "jobmanager.memory.jvm-metaspace.size": "160m",
            "taskmanager.memory.framework.heap.size": "64m",
            "taskmanager.memory.task.heap.size": "256m",
            "taskmanager.memory.managed.size": "32m",  # batch sorting only (Beam state lives on the heap)
            "taskmanager.memory.framework.off-heap.size": "64m",
            "taskmanager.memory.task.off-heap.size": "0m",
            "taskmanager.memory.network.min": "64m",
            "taskmanager.memory.network.max": "64m",
            "taskmanager.memory.jvm-metaspace.size": "192m",
            "taskmanager.memory.jvm-overhead.min": "128m",
            "taskmanager.memory.jvm-overhead.max": "128m",
            "state.backend.type": "hashmap",
            "state.checkpoints.dir": (self.workdir / "checkpoints").as_uri(),
            "state.savepoints.dir": (self.workdir / "savepoints").as_uri(),
            "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
            "io.tmp.dirs": str(self.workdir / "tmp"),
            "web.submit.enable": "false",
            "heartbeat.timeout": 20000,
            "restart-strategy.type": "fixed-delay",
            "restart-strategy.fixed-delay.attempts": 20,
            "restart-strategy.fixed-delay.delay": "2 s",
        }
        (conf / "config.yaml").write_text("".join(f"{key}: {value}\n" for key, value in settings.items()))
        (conf / "log4j.properties").write_text(
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = MainAppender\n"
            "appender.main.name = MainAppender\n"
            "appender.main.type = File\n"
            "appender.main.fileName = ${sys:log.file}\n"
            "appender.main.layout.type = PatternLayout\n"
            "appender.main.layout.pattern = %d{HH:mm:ss,SSS} %-5p %-40c %x - %m%n\n"
            "logger.netty.name = org.apache.flink.shaded.netty4\n"
            "logger.netty.level = WARN\n"
        )
        return conf

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        bindir = str(Path(self.python).parent)
        # boot runs `python` from PATH: this project's interpreter, used as is (no venv of its own).
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        env["RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT"] = "1"
        env["PYTHONPATH"] = str(_REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        return env

    def _spawn(self, name: str, main_class: str, conf: Path, heap: str) -> None:
        lib = self.pieces / "flink" / "lib"
        log_file = self.workdir / "log" / f"{name}.log"
        command = [
            "java",
            *JAVA_OPENS,
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:MaxDirectMemorySize=128m",
            "-XX:MaxMetaspaceSize=192m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            f"-Dlog.file={log_file}",
            f"-Dlog4j.configurationFile=file:{conf / 'log4j.properties'}",
            "-cp",
            f"{lib}/*",
            main_class,
            "--configDir",
            str(conf),
        ]
        if name.startswith("taskmanager-"):
            command += ["-D", f"taskmanager.resource-id={name}"]
        self._popen(name, command, log_file)

    def _spawn_job_server(self) -> None:
        log_file = self.workdir / "log" / "job-server.log"
        command = [
            "java",
            *JAVA_OPENS,
            "-Xmx384m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-jar",
            str(job_server_jar(self.pieces)),
            "--flink-master",
            self.flink_master,
            "--artifacts-dir",
            str(self.workdir / "artifacts"),
            "--job-host",
            "127.0.0.1",
            "--job-port",
            str(self.job_port),
            "--artifact-port",
            "0",
            "--expansion-port",
            "0",
        ]
        self._popen("job-server", command, log_file)

    def _popen(self, name: str, command: list[str], log_file: Path) -> None:
        from pipeline.broker import die_with_parent_hook

        out = open(self.workdir / "log" / f"{name}.out", "wb")
        try:
            proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self._child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent_hook(),
            )
        finally:
            out.close()
        self._daemons.append(
            _Daemon(name, proc, log_file if name != "job-server" else self.workdir / "log" / f"{name}.out")
        )

    def _wait(self, ready, deadline: float, what: str) -> None:
        while not ready():
            dead = self.dead()
            if dead is not None:
                raise FlinkClusterError(f"{dead.name} exited with status {dead.proc.returncode}:\n{dead.tail()}")
            if time.monotonic() > deadline:
                raise FlinkClusterError(f"{what} not ready in time (logs in {self.workdir / 'log'})")
            time.sleep(0.25)

    def _rest(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(self.rest_url + path, timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None


def cancel_job(flink_master: str, job_name: str, timeout: float = 30.0) -> list[str]:
    """Cancels the running Flink jobs named ``job_name`` through Flink's REST API; returns their ids.

    Beam's job server (2.62) only cancels its own submission thread when asked: the job keeps running
    on a remote cluster, so the launcher cancels it where it runs.
    """
    base = flink_master if flink_master.startswith("http") else f"http://{flink_master}"
    with urllib.request.urlopen(f"{base}/jobs/overview", timeout=timeout) as response:
        jobs = json.loads(response.read())["jobs"]
    cancelled = []
    for job in jobs:
        if job["name"] == job_name and job["state"] not in ("FINISHED", "CANCELED", "FAILED"):
            request = urllib.request.Request(f"{base}/jobs/{job['jid']}?mode=cancel", method="PATCH")
            with urllib.request.urlopen(request, timeout=timeout):
                cancelled.append(job["jid"])
    return cancelled


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), so SDK workers in their own process groups stop too."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def _print_pins() -> None:
    pins = {
        "PIECES": pieces_dir(),
        "BEAM_JOB_SERVER_VERSION": BEAM_JOB_SERVER_VERSION,
        "FLINK_VERSION": FLINK_VERSION,
        "FLINK_SDIST_SHA256": FLINK_SDIST_SHA256,
        "BEAM_BOOT_VERSION": BEAM_BOOT_VERSION,
    }
    for name, value in pins.items():
        print(f"{name}={shlex.quote(str(value))}")


if __name__ == "__main__":
    if sys.argv[1:] == ["pins"]:
        _print_pins()
    else:
        print("usage: python -m pipeline.flink_cluster pins", file=sys.stderr)
        sys.exit(2)
