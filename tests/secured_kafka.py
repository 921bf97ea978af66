"""An Apache Kafka broker with a SASL_SSL listener (SCRAM-SHA-512), TLS certificates made here, and ACLs.

:func:`make_certificates` writes a CA and a broker certificate for 127.0.0.1 (PEM, ``cryptography``);
:func:`secured_broker` starts :class:`~pipeline.kafka_broker.KafkaBroker` with:

* the PLAINTEXT listener the tests administer through (its principal ``User:ANONYMOUS`` is a super user,
  as is ``User:admin``), and a ``SASL_SSL`` listener where clients log in with SCRAM-SHA-512;
* SCRAM credentials created at format time (``kafka-storage format --add-scram``);
* the KRaft authorizer (``org.apache.kafka.metadata.authorizer.StandardAuthorizer``): nobody else may do
  anything an ACL does not allow.

:func:`grant_job` gives a principal exactly what ``rnncast serve`` needs (see README, "Secured clusters").
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.kafka_broker import KafkaBroker
from pipeline.kafka_config import KafkaSettings

ADMIN, ADMIN_PASSWORD = "admin", "admin-secret-4d1f"
LISTENER = "SASL_SSL"


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA certificate clients verify the broker with
    broker_pem: Path  # the broker's key and certificate chain (Kafka's PEM keystore)


def make_certificates(directory: Path) -> Certificates:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("rnncast test CA"))
        .issuer_name(name("rnncast test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_path, broker_path = directory / "ca.pem", directory / "broker.pem"
    ca_path.write_bytes(ca.public_bytes(pem))
    broker_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(pem)
        + ca.public_bytes(pem)
    )
    return Certificates(ca_path, broker_path)


def secured_broker(directory: Path, users: dict[str, str]) -> KafkaBroker:
    """A broker (not started) with the SASL_SSL listener, SCRAM users ``users`` (+ the admin) and ACLs on."""
    certificates = make_certificates(directory / "tls")
    scram = [
        arg
        for user, password in {ADMIN: ADMIN_PASSWORD, **users}.items()
        for arg in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]")
    ]
    prefix = f"listener.name.{LISTENER.lower()}"
    return KafkaBroker(
        data_dir=directory / "kafka",
        extra_listeners={LISTENER: "SASL_SSL"},
        extra_properties={
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            f"{prefix}.scram-sha-512.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"{prefix}.ssl.keystore.type": "PEM",
            f"{prefix}.ssl.keystore.location": str(certificates.broker_pem),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN};User:ANONYMOUS",
        },
        format_args=scram,
    )


def client_settings(broker: KafkaBroker, directory: Path, user: str, password: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=broker.bootstrap_for(LISTENER),
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=user,
        sasl_password=password,
        ssl_cafile=str(directory / "tls" / "ca.pem"),
    )


def cli_args(broker: KafkaBroker, directory: Path, user: str) -> list[str]:
    """The connection options of an rnncast command for ``user`` (the password goes in $RNNCAST_KAFKA_PASSWORD)."""
    return [
        "--bootstrap",
        broker.bootstrap_for(LISTENER),
        "--security-protocol",
        "SASL_SSL",
        "--sasl-mechanism",
        "SCRAM-SHA-512",
        "--sasl-username",
        user,
        "--ssl-cafile",
        str(directory / "tls" / "ca.pem"),
    ]


def grant(broker: KafkaBroker, principal: str, grants: Iterable[tuple[str, str, str, str]]) -> None:
    """ACLs through the PLAINTEXT listener (super user): ``(resource type, name, pattern, operation)``."""
    from kafka import KafkaAdminClient
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    acls = [
        ACL(
            principal=f"User:{principal}",
            host="*",
            operation=ACLOperation[operation],
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(ResourceType[kind], name, ACLResourcePatternType[pattern]),
        )
        for kind, name, pattern, operation in grants
    ]
    admin = KafkaAdminClient(bootstrap_servers=[broker.bootstrap], client_id="rnncast-tests-acl")
    try:
        result = admin.create_acls(acls)
        if result.get("failed"):
            raise RuntimeError(f"ACLs not created: {result['failed']}")
    finally:
        admin.close()


def job_grants(
    *, input_topic: str, output_topic: str, dlq_topic: str, group: str, exactly_once: bool = False
) -> list[tuple[str, str, str, str]]:
    """What ``rnncast serve`` needs: read its input, write its outputs, read and write its changelog, use its
    group (and with exactly-once its transactional ids). Nothing else: the topics exist before it starts."""
    changelog = f"{group}.rnncast-state"
    transactions = [
        ("TRANSACTIONAL_ID", f"{group}.rnncast-txn.", "PREFIXED", "WRITE"),
        ("TRANSACTIONAL_ID", f"{group}.rnncast-txn.", "PREFIXED", "DESCRIBE"),
    ]
    return (transactions if exactly_once else []) + [
        ("TOPIC", input_topic, "LITERAL", "READ"),
        ("TOPIC", output_topic, "LITERAL", "WRITE"),
        ("TOPIC", dlq_topic, "LITERAL", "WRITE"),
        ("TOPIC", changelog, "LITERAL", "READ"),
        ("TOPIC", changelog, "LITERAL", "WRITE"),
        ("GROUP", group, "LITERAL", "READ"),
    ]
