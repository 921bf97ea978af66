"""A single-node Apache Kafka broker (KRaft, broker and controller in one JVM) for tests and local runs.

The jars come from Maven Central through ``make kafka`` (``scripts/fetch_kafka.sh``, version
pinned in ``scripts/kafka/pom.xml``) into ``.kafka/kafka-<version>/lib`` of the checkout;
``RNNCAST_KAFKA_LIB`` points elsewhere. Nothing is downloaded when the broker starts.

Layout of the data directory (a temporary one, removed on stop, unless ``data_dir`` is
given; then the log survives a restart)::

    server.properties   written on every start from the arguments
    log4j2.properties   broker logging to stdout (kept as the broker's log tail)
    ports.json          the ports of the first start, reused so a restart keeps its address
    log/                log.dirs: the topics, formatted once by ``kafka.tools.StorageTool``

Usage::

    with KafkaBroker() as broker:
        produce_to(broker.bootstrap)

Secured listeners are extra listeners plus properties, e.g.
``extra_listeners={"SASL_SSL": "SASL_SSL"}`` with ``extra_properties`` naming the SASL
mechanism and keystores, and ``format_args=["--add-scram", "SCRAM-SHA-512=[name=u,password=p]"]``
for credentials that must exist before the first start; ``bootstrap_for("SASL_SSL")`` is
that listener's address.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from pipeline.broker import BrokerError, BrokerProcess, _port_is_free, _url_host, free_port

__all__ = ["KafkaBroker", "find_kafka_lib", "kafka_version"]

_REPO = Path(__file__).resolve().parent.parent
_POM = _REPO / "scripts" / "kafka" / "pom.xml"
_CONTROLLER = "CONTROLLER"
_CLIENT = "PLAINTEXT"
_STARTED = "Kafka Server started"
_ADDRESS_IN_USE = "Address already in use"

# A one-node cluster: internal topics with one replica, groups joined without the 3 s wait
# meant for many members, topics created only by whoever means to (the job and the tests
# create theirs, as against a managed cluster).
_DEFAULT_PROPERTIES = {
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "auto.create.topics.enable": "false",
    "num.partitions": "1",
    "num.network.threads": "2",
    "num.io.threads": "4",
}

_LOG4J2 = """\
status = error
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
"""


def kafka_version() -> str:
    """The pinned Apache Kafka version (``kafka.version`` in ``scripts/kafka/pom.xml``)."""
    try:
        match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", _POM.read_text())
    except OSError as err:
        raise BrokerError(f"cannot read the pinned Kafka version from {_POM}: {err}") from err
    if match is None:
        raise BrokerError(f"{_POM} names no <kafka.version>")
    return match.group(1).strip()


def find_kafka_lib() -> Path:
    """The directory of the broker's jars: ``$RNNCAST_KAFKA_LIB`` or ``.kafka/kafka-<version>/lib``.

    Raises:
        BrokerError: When the jars are missing (one line saying to run ``make kafka``).
    """
    override = os.environ.get("RNNCAST_KAFKA_LIB")
    if override:
        lib = Path(override)
        version = "(RNNCAST_KAFKA_LIB)"
        jars = sorted(lib.glob("kafka_2.13-*.jar"))
    else:
        version = kafka_version()
        lib = _REPO / ".kafka" / f"kafka-{version}" / "lib"
        jars = [lib / f"kafka_2.13-{version}.jar"]
    if not jars or not all(jar.is_file() for jar in jars):
        raise BrokerError(f"the Apache Kafka {version} jars are not in {lib}: run `make kafka`")
    return lib


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and Path(home, "bin", "java").is_file():
        return str(Path(home, "bin", "java"))
    found = shutil.which("java")
    if found is None:
        raise BrokerError("java is not installed: run scripts/install_system_deps.sh (Java 17)")
    return found


def _cluster_id() -> str:
    # Kafka's Uuid.randomUuid().toString(): URL-safe base64 of 16 random bytes, unpadded, never
    # starting with "-" (the tool would read it as an option). Generated here to save a JVM start.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class KafkaBroker(BrokerProcess):
    """One Apache Kafka node in KRaft mode (``process.roles=broker,controller``).

    Same lifecycle as the Tansu :class:`pipeline.broker.EmbeddedBroker` (context manager,
    :attr:`bootstrap`, :meth:`start`/:meth:`stop`/:meth:`kill`), plus a data directory.

    Args:
        host: Interface of every listener; loopback by default.
        port: PLAINTEXT client port; 0 picks a free one (or, with a ``data_dir`` that ran
            before, the port of that first run, so clients reconnect after a restart).
        data_dir: Where the configuration and the log live; kept across stop/start. None:
            a temporary directory, removed on stop.
        extra_listeners: More listeners, ``{name: security protocol}`` (e.g.
            ``{"SASL_SSL": "SASL_SSL"}``), each on its own free port (kept in a data dir
            across restarts); see :meth:`bootstrap_for`.
        extra_properties: ``server.properties`` entries written after (and so overriding)
            the defaults: log cleaner settings, SASL/SSL, authorizer, ...
        format_args: Extra arguments of ``kafka-storage format`` on the first start of a
            data directory (e.g. ``["--add-scram", "SCRAM-SHA-512=[name=u,password=p]"]``).
        jvm_args: Extra JVM arguments (system properties, ...).
        heap: The JVM's ``-Xmx``.
        kafka_lib: The jar directory; :func:`find_kafka_lib` when omitted.
        **options: ``advertised_host``, ``log_stream``, ``die_with_parent``, ``startup_timeout``
            (default 120 s: the format step included, a JVM on a loaded 2-core machine needs tens
            of seconds) and ``stop_timeout`` (between SIGTERM, a controlled shutdown, and SIGKILL;
            default 30 s), as for :class:`pipeline.broker.BrokerProcess`.
    """

    engine = "kafka"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        extra_listeners: dict[str, str] | None = None,
        extra_properties: dict[str, str] | None = None,
        format_args: list[str] | None = None,
        jvm_args: list[str] | None = None,
        heap: str = "512m",
        kafka_lib: Path | None = None,
        **options: Any,
    ) -> None:
        self.data_dir: Path | None = Path(data_dir).resolve() if data_dir is not None else None
        self._temporary = data_dir is None
        options.setdefault("startup_timeout", 120.0)
        options.setdefault("stop_timeout", 30.0)
        super().__init__(host, port, **options)
        for name in extra_listeners or {}:
            if name in (_CLIENT, _CONTROLLER) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
                raise ValueError(f"listener name must be upper case and not {_CLIENT}/{_CONTROLLER}: {name!r}")
        self.extra_listeners = dict(extra_listeners or {})
        self.extra_properties = dict(extra_properties or {})
        self.format_args = list(format_args or [])
        self.jvm_args = list(jvm_args or [])
        self.heap = heap
        self._kafka_lib = kafka_lib
        self._lib: Path | None = None
        self._ports: dict[str, int] = {}

    # -- public API ---------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        """The broker's ``log.dirs`` (the topics' files)."""
        if self.data_dir is None:
            raise BrokerError("the broker has not been started")
        return self.data_dir / "log"

    def bootstrap_for(self, listener: str) -> str:
        """The ``host:port`` of one listener (``PLAINTEXT`` is :attr:`bootstrap`)."""
        if listener == _CLIENT:
            return self.bootstrap
        if listener not in self._ports:
            raise BrokerError(f"no listener {listener!r} (known: {sorted(self._ports)}); has the broker started?")
        return f"{_url_host(self.advertised_host)}:{self._ports[listener]}"

    def start(self) -> KafkaBroker:
        """Starts the broker (formatting a new data directory first) and waits until it answers.

        With ``port=0`` and a data directory that ran before, the client port of that run is
        taken again, so a restart keeps the address clients know.
        """
        recorded = self._recorded_ports()
        if self._requested_port == 0 and _CLIENT in recorded:
            self._requested_port = recorded[_CLIENT]
        super().start()
        return self

    # -- engine hooks -------------------------------------------------------------

    def _prepare(self) -> None:
        self._lib = self._kafka_lib or find_kafka_lib()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="rnncast-kafka-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        assert self._lib is not None and self.data_dir is not None
        self._ports = self._choose_ports()
        (self.data_dir / "ports.json").write_text(json.dumps(self._ports, sort_keys=True) + "\n")
        (self.data_dir / "server.properties").write_text(self._server_properties())
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        if not (self.log_dir / "meta.properties").is_file():
            self._format()
        return [*self._java_command(), "kafka.Kafka", str(self.data_dir / "server.properties")]

    def _address_taken(self, lines: list[str]) -> bool:
        return any(_ADDRESS_IN_USE in line for line in lines)

    def _probe_allowed(self, lines: list[str], since_launch: float) -> bool:
        # The JVM takes seconds to bind; probing earlier could reach another owner of the port.
        return any(_STARTED in line for line in lines)

    def _cleanup(self) -> None:
        if self._temporary and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    # -- internals ----------------------------------------------------------------

    def _recorded_ports(self) -> dict[str, int]:
        if self.data_dir is None:
            return {}
        try:
            return {str(k): int(v) for k, v in json.loads((self.data_dir / "ports.json").read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _choose_ports(self) -> dict[str, int]:
        # The controller's address is written into the formatted metadata log, so a data
        # directory keeps it; other listeners keep theirs so clients find the same address.
        recorded = self._recorded_ports()
        ports = {_CLIENT: self.port}
        taken = {self.port}
        for name in [_CONTROLLER, *self.extra_listeners]:
            port = recorded.get(name, 0)
            if not port or port in taken or not _port_is_free(self.host, port):
                if name == _CONTROLLER and port and port not in taken:
                    raise BrokerError(f"the controller port {self.host}:{port} of {self.data_dir} is in use")
                port = free_port(self.host)
                while port in taken:
                    port = free_port(self.host)
            ports[name] = port
            taken.add(port)
        return ports

    def _server_properties(self) -> str:
        host = _url_host(self.host)
        advertised = _url_host(self.advertised_host)
        names = [_CLIENT, _CONTROLLER, *self.extra_listeners]
        protocols = {_CLIENT: "PLAINTEXT", _CONTROLLER: "PLAINTEXT", **self.extra_listeners}
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{host}:{self._ports[_CONTROLLER]}",
            "controller.listener.names": _CONTROLLER,
            "inter.broker.listener.name": _CLIENT,
            "listeners": ",".join(f"{n}://{host}:{self._ports[n]}" for n in names),
            "advertised.listeners": ",".join(f"{n}://{advertised}:{self._ports[n]}" for n in names if n != _CONTROLLER),
            "listener.security.protocol.map": ",".join(f"{n}:{protocols[n]}" for n in names),
            "log.dirs": str(self.log_dir),
            **_DEFAULT_PROPERTIES,
            **self.extra_properties,
        }
        return "".join(f"{key}={_escape(value)}\n" for key, value in properties.items())

    def _java_command(self) -> list[str]:
        assert self._lib is not None and self.data_dir is not None
        return [
            _java(),
            f"-Xmx{self.heap}",
            "-Xms64m",
            # Two shared cores: one GC thread family, no parallel young collections.
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            # Else the JVM listens on ::ffff:127.0.0.1, an IPv6 socket for an IPv4 address.
            *([] if ":" in self.host else ["-Djava.net.preferIPv4Stack=true"]),
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            *self.jvm_args,
            "-cp",
            str(self._lib / "*"),
        ]

    def _format(self) -> None:
        assert self.data_dir is not None
        command = [
            *self._java_command(),
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "--cluster-id",
            _cluster_id(),
            "--config",
            str(self.data_dir / "server.properties"),
            *self.format_args,
        ]
        try:
            done = subprocess.run(
                command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=self.startup_timeout
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise BrokerError(f"kafka-storage format of {self.log_dir} failed: {err}") from err
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
            raise BrokerError(f"kafka-storage format of {self.log_dir} exited with {done.returncode}\n{tail}")


def _escape(value: str) -> str:
    # java.util.Properties: backslashes escape; a value may not start with blanks.
    return value.replace("\\", "\\\\").replace("\n", "\\n")
