"""Kafka connection settings shared by every command that talks to a broker.

The SASL password is never accepted on the command line (it would show in ``ps`` and
shell history): it comes from the ``RNNCAST_KAFKA_PASSWORD`` environment variable or
from ``--sasl-password-file``. It is held in a :class:`Secret`, whose ``repr``/``str``
never reveal it, so settings can be logged safely.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "PASSWORD_ENV",
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "KafkaSettings",
    "Secret",
    "add_kafka_arguments",
    "client_kwargs",
    "librdkafka_config",
    "login_failure",
    "settings_from_args",
    "unreachable",
]

PASSWORD_ENV = "RNNCAST_KAFKA_PASSWORD"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}")


class Secret:
    """A string that does not show itself in ``repr``, ``str`` or f-strings.

    Args:
        value: The secret text.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value

    def get_secret_value(self) -> str:
        """Returns the secret text. Pass it to a client; never log it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach a Kafka cluster (or the embedded Tansu broker).

    Attributes:
        bootstrap: Comma-separated ``host:port`` list.
        security_protocol: One of ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL``.
        sasl_mechanism: ``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512`` (SASL protocols only).
        sasl_username: SASL user name.
        sasl_password: SASL password; a plain ``str`` is wrapped into a :class:`Secret`.
        ssl_cafile: CA bundle (PEM) to verify the brokers.
        ssl_certfile: Client certificate (PEM) for mutual TLS.
        ssl_keyfile: Client private key (PEM) for mutual TLS.

    Raises:
        ValueError: If the combination is inconsistent (e.g. SASL without a mechanism).
    """

    bootstrap: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sasl_password, str):
            object.__setattr__(self, "sasl_password", Secret(self.sasl_password))
        servers = self.servers
        if not servers:
            raise ValueError("bootstrap must name at least one host:port")
        for server in servers:
            if not _HOST_PORT.fullmatch(server) or not 0 < int(server.rsplit(":", 1)[1]) < 65536:
                raise ValueError(f"bootstrap server {server!r} is not host:port")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"security protocol {self.security_protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}"
            )
        uses_sasl = self.security_protocol.startswith("SASL_")
        if uses_sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ValueError(
                    f"{self.security_protocol} needs --sasl-mechanism, one of {', '.join(SASL_MECHANISMS)}"
                )
            if not self.sasl_username:
                raise ValueError(f"{self.security_protocol} needs --sasl-username")
            if not self.sasl_password:
                raise ValueError(
                    f"{self.security_protocol} needs a password in ${PASSWORD_ENV} or --sasl-password-file"
                )
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise ValueError(
                f"SASL options need --security-protocol SASL_PLAINTEXT or SASL_SSL, not {self.security_protocol}"
            )
        uses_ssl = self.security_protocol in ("SSL", "SASL_SSL")
        if not uses_ssl and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            raise ValueError(f"SSL files need --security-protocol SSL or SASL_SSL, not {self.security_protocol}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("--ssl-certfile and --ssl-keyfile go together")

    @property
    def servers(self) -> list[str]:
        """The bootstrap servers as a list."""
        return [s.strip() for s in self.bootstrap.split(",") if s.strip()]

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict that is safe to log (the password is masked)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["sasl_password"] is not None:
            out["sasl_password"] = "**********"
        return out


def add_kafka_arguments(parser: argparse.ArgumentParser, *, default_bootstrap: str = DEFAULT_BOOTSTRAP) -> None:
    """Adds the Kafka connection options to a subcommand's parser.

    Args:
        parser: The subcommand's parser.
        default_bootstrap: Default of ``--bootstrap`` (the embedded broker's default address).
    """
    group = parser.add_argument_group(
        "Kafka connection",
        f"The SASL password is read from ${PASSWORD_ENV} or --sasl-password-file, never from the command line.",
    )
    group.add_argument(
        "--bootstrap",
        default=default_bootstrap,
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers (default: %(default)s)",
    )
    group.add_argument(
        "--security-protocol",
        default="PLAINTEXT",
        choices=SECURITY_PROTOCOLS,
        help="default: %(default)s",
    )
    group.add_argument("--sasl-mechanism", choices=SASL_MECHANISMS, help="SASL mechanism (SASL_* protocols)")
    group.add_argument("--sasl-username", metavar="USER", help="SASL user name")
    group.add_argument(
        "--sasl-password-file",
        type=Path,
        metavar="PATH",
        help=f"file holding the SASL password (overrides ${PASSWORD_ENV}); one trailing newline is dropped",
    )
    group.add_argument("--ssl-cafile", type=Path, metavar="PEM", help="CA bundle to verify the brokers")
    group.add_argument("--ssl-certfile", type=Path, metavar="PEM", help="client certificate (mutual TLS)")
    group.add_argument("--ssl-keyfile", type=Path, metavar="PEM", help="client private key (mutual TLS)")


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> KafkaSettings:
    """Builds :class:`KafkaSettings` from options added by :func:`add_kafka_arguments`.

    Args:
        args: Parsed arguments.
        environ: Environment to read ``RNNCAST_KAFKA_PASSWORD`` from (default ``os.environ``).

    Returns:
        The settings.

    Raises:
        pipeline.cli.UsageError: On inconsistent options or unreadable files (one line,
            never containing the password).
    """
    from pipeline.cli import UsageError

    environ = os.environ if environ is None else environ
    protocol = args.security_protocol
    password: Secret | None = None
    if args.sasl_password_file is not None:
        try:
            text = args.sasl_password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            # The path is not echoed: argparse expands the prefix "--sasl-password SECRET" to
            # "--sasl-password-file SECRET", and the secret must not reach the terminal or logs.
            reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
            raise UsageError(
                f"cannot read the file given to --sasl-password-file ({reason}); the password itself "
                f"belongs in ${PASSWORD_ENV} or in that file, never on the command line"
            ) from None
        password = Secret(text[:-1] if text.endswith("\n") else text)
    elif protocol.startswith("SASL_") and environ.get(PASSWORD_ENV):
        # Read only where SASL is in use: a globally exported password must not turn a
        # PLAINTEXT run into an error.
        password = Secret(environ[PASSWORD_ENV])
    for option in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(args, option)
        if path is not None and not path.is_file():
            raise UsageError(f"--{option.replace('_', '-')} {path}: no such file")
    try:
        return KafkaSettings(
            bootstrap=args.bootstrap,
            security_protocol=protocol,
            sasl_mechanism=args.sasl_mechanism,
            sasl_username=args.sasl_username,
            sasl_password=password,
            ssl_cafile=None if args.ssl_cafile is None else str(args.ssl_cafile),
            ssl_certfile=None if args.ssl_certfile is None else str(args.ssl_certfile),
            ssl_keyfile=None if args.ssl_keyfile is None else str(args.ssl_keyfile),
        )
    except ValueError as err:
        raise UsageError(str(err)) from None


def client_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's ``KafkaProducer``, ``KafkaConsumer`` and
    ``KafkaAdminClient`` (connection and security only).

    The result holds the plain password when SASL is used: pass it straight to the
    client and do not log it (log :meth:`KafkaSettings.redacted` instead).

    Args:
        settings: The connection settings.

    Returns:
        A new dict, e.g. ``{"bootstrap_servers": [...], "security_protocol": "PLAINTEXT"}``.
    """
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol.startswith("SASL_"):
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        assert settings.sasl_password is not None
        kwargs["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    for option in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, option)
        if value is not None:
            kwargs[option] = value
    return kwargs


# client_kwargs' keys in librdkafka's terms: a setting added there without a name here fails loudly.
_LIBRDKAFKA_NAMES = {
    "bootstrap_servers": "bootstrap.servers",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanisms",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
}


def librdkafka_config(settings: KafkaSettings) -> dict[str, Any]:
    """Configuration for confluent-kafka's (librdkafka) ``Producer`` and ``Consumer``: :func:`client_kwargs`
    under librdkafka's names, so both client libraries get the same connection and security settings.

    The job's hot path (the source's consumer, the sink's producer) uses librdkafka: its I/O threads
    run in C without Python's GIL (see benchmarks/README.md). The result holds the plain password
    when SASL is used: pass it straight to the client and do not log it.
    """
    config = {_LIBRDKAFKA_NAMES[name]: value for name, value in client_kwargs(settings).items()}
    config["bootstrap.servers"] = ",".join(config["bootstrap.servers"])
    return config


def unreachable(settings: KafkaSettings, timeout: float = 3.0) -> str | None:
    """A quick TCP check of the bootstrap servers, for a fast and clear CLI error.

    kafka-python otherwise retries an unreachable bootstrap list for many seconds.

    Args:
        settings: Connection settings.
        timeout: Seconds per connection attempt.

    Returns:
        None if at least one server accepts a TCP connection, else a one-line reason.
    """
    reasons = []
    for server in settings.servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return None
        except OSError as err:
            reasons.append(f"{server}: {err.strerror or err}")
    return "; ".join(reasons)


def login_failure(settings: KafkaSettings, timeout: float = 20.0) -> str | None:
    """Connects once with librdkafka and reports a failed login (SASL) or TLS handshake, for a clear CLI error.

    kafka-python only sees the broker close the connection after a wrong password and retries until
    its bootstrap times out; librdkafka names the failure. PLAINTEXT settings are not probed.

    Returns:
        None if the connection authenticated (or nothing was learnt within ``timeout``), else a
        one-line reason (the broker's or librdkafka's words; never the password).
    """
    if settings.security_protocol == "PLAINTEXT":
        return None
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    failures: list[tuple[str, str]] = []
    kinds = {KafkaError._AUTHENTICATION: "authentication", KafkaError._SSL: "TLS handshake"}

    def on_error(error: KafkaError) -> None:
        if error.code() in kinds:
            failures.append((kinds[error.code()], error.str()))

    # log_level 0: the failure is reported once, by the caller, not as librdkafka log lines too.
    admin = AdminClient(
        {**librdkafka_config(settings), "client.id": "rnncast-login", "error_cb": on_error, "log_level": 0}
    )
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        pass  # the reason, if it was a login, comes through on_error
    admin.poll(0)  # serves the error callbacks
    if not failures:
        return None
    what, detail = failures[0]
    user = (
        f" as {settings.sasl_username!r} ({settings.sasl_mechanism})"
        if what == "authentication" and settings.sasl_username
        else ""
    )
    return f"{what} failed{user}: {detail}"
