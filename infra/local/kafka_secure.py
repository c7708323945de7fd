"""The local Kafka's secured listener: SCRAM users, ACLs from mlops.bus.acl, client files. Run by stack.sh.

    kafka_secure.py users USERS.json                 make the password file (0600); add missing identities
    kafka_secure.py scram-args USERS.json            one `SCRAM-SHA-512=[name=..,password=..]` per line (format time)
    kafka_secure.py scram-file USERS.json NAME OUT   ConfigCommand's --add-config-file for one user (0600)
    kafka_secure.py missing-users USERS.json         the identities whose login fails on the secured listener
    kafka_secure.py acls USERS.json [PREFIX ...]     as admin: create the table's bindings (topic names
                                                     with each PREFIX, none by default), remove stale ones
    kafka_secure.py clients USERS.json CLIENTS_DIR   ca.pem, upstream.properties, admin.properties (0600)
    kafka_secure.py password USERS.json NAME         one identity's password on stdout (for stack.sh)
    kafka_secure.py ping USERS.json                  as admin: the broker answers Metadata and lists itself
    kafka_secure.py admin-config USERS.json OUT      the JVM admin tools' --command-config as admin (0600)

The listener is read from MLOPS_KAFKA_SECURE_BOOTSTRAP (127.0.0.1:9092) and its CA from
MLOPS_KAFKA_CA (<USERS.json's folder>/ca.pem). Exit status 1 means "not yet" (broker not reachable,
a login or request failed) and says why on stderr; stack.sh polls until it passes.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from pathlib import Path

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, SaslAuthenticationFailed, for_code
from aiokafka.protocol.admin import (
    CreateAclsRequest_v1,
    DeleteAclsRequest_v1,
    DescribeAclsRequest_v1,
)
from aiokafka.protocol.api import Request
from aiokafka.protocol.metadata import MetadataRequest

from mlops.bus import acl
from mlops.private_files import write_private
from mlops.settings import KafkaSettings

MECHANISM = "SCRAM-SHA-512"
TIMEOUT_MS = 5_000
# Kafka's protocol codes (org.apache.kafka.common.resource / acl)
RESOURCE = {"ANY": 1, "TOPIC": 2, "GROUP": 3}
PATTERN = {"ANY": 1, "MATCH": 2, "LITERAL": 3, "PREFIXED": 4}
OPERATION = {"ANY": 1, "READ": 3, "WRITE": 4, "CREATE": 5, "DESCRIBE": 8}
ALLOW = 3
ANY_PERMISSION = 1


def load_users(path: Path) -> dict[str, str]:
    try:
        users = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as error:
        raise SystemExit(
            f"{path} is not JSON ({error}): repair or delete it (a new password for everyone)"
        ) from None
    if not isinstance(users, dict) or not all(isinstance(v, str) and v for v in users.values()):
        raise SystemExit(f"{path} must map each identity to its password")
    return users


def ensure_users(path: Path) -> dict[str, str]:
    """Passwords are made once; identities added to the table later get theirs without changing others'."""
    users = load_users(path)
    missing = [name for name in acl.IDENTITIES if name not in users]
    if missing or not path.exists():
        # token_urlsafe: no ',', ']' or '=' that the SCRAM argument syntax would trip on
        users |= {name: secrets.token_urlsafe(24) for name in missing}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, json.dumps(users, indent=2, sort_keys=True) + "\n")
    path.chmod(0o600)
    return users


def settings(users: dict[str, str], identity: str, ca: Path) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=os.environ.get("MLOPS_KAFKA_SECURE_BOOTSTRAP", "127.0.0.1:9092"),
        security_protocol="SASL_SSL",
        sasl_mechanism=MECHANISM,
        sasl_username=identity,
        sasl_password=users[identity],
        ssl_cafile=ca,
        request_timeout_ms=TIMEOUT_MS,
    )


async def connect(kafka: KafkaSettings):
    host, port = kafka.bootstrap.split(",")[0].rsplit(":", 1)
    options = kafka.client_options()
    return await create_conn(
        host,
        int(port),
        request_timeout_ms=kafka.request_timeout_ms,
        ssl_context=options["ssl_context"],
        security_protocol=kafka.security_protocol,
        sasl_mechanism=kafka.sasl_mechanism,
        sasl_plain_username=kafka.sasl_username,
        sasl_plain_password=kafka.sasl_password.get_secret_value(),
    )


async def missing_users(users: dict[str, str], ca: Path) -> list[str]:
    missing = []
    for identity in acl.IDENTITIES:
        try:
            conn = await connect(settings(users, identity, ca))
        except SaslAuthenticationFailed:
            missing.append(identity)
            continue
        conn.close()
    return missing


class _DescribeAcls(Request[DescribeAclsRequest_v1]):
    """Every ACL of the cluster (v1: the first version with pattern types that Kafka 4 still serves)."""

    API_KEY = 29

    def build(self, request_struct_class):
        return request_struct_class(
            RESOURCE["ANY"], None, PATTERN["ANY"], None, None, OPERATION["ANY"], ANY_PERMISSION
        )


class _CreateAcls(Request[CreateAclsRequest_v1]):
    """Many bindings in one request (aiokafka's own builder sends one)."""

    API_KEY = 30

    def __init__(self, creations: list[tuple]) -> None:
        self.creations = creations

    def build(self, request_struct_class):
        return request_struct_class(self.creations)


class _DeleteAcls(Request[DeleteAclsRequest_v1]):
    API_KEY = 31

    def __init__(self, filters: list[tuple]) -> None:
        self.filters = filters

    def build(self, request_struct_class):
        return request_struct_class(self.filters)


def _key(binding: acl.AclBinding) -> tuple:
    return (
        RESOURCE[binding.resource_type],
        binding.resource_name,
        PATTERN[binding.pattern_type],
        binding.principal,
        "*",
        OPERATION[binding.operation],
        ALLOW,
    )


async def apply_acls(users: dict[str, str], ca: Path, prefixes: list[str]) -> tuple[int, int, int]:
    """Creates the missing bindings and deletes those of our identities that the table no longer has."""
    conn = await connect(settings(users, acl.ADMIN, ca))
    try:
        described = await conn.send(_DescribeAcls())
        if described.error_code:
            raise for_code(described.error_code)(described.error_message)
        principals = {f"User:{identity}" for identity in acl.IDENTITIES}
        existing = {
            (r_type, r_name, r_pattern, principal, host, operation, permission)
            for r_type, r_name, r_pattern, entries in described.resources
            for principal, host, operation, permission in entries
            if principal in principals
        }
        wanted = {_key(binding) for prefix in prefixes for binding in acl.bindings(prefix)}
        create = sorted(wanted - existing)
        stale = sorted(existing - wanted)
        if create:
            response = await conn.send(_CreateAcls(create))
            errors = [(code, message) for code, message in response.creation_responses if code]
            if errors:
                raise for_code(errors[0][0])(f"creating ACLs: {errors[0][1]}")
        if stale:
            response = await conn.send(_DeleteAcls(stale))
            for code, message, _ in response.filter_responses:
                if code:
                    raise for_code(code)(f"deleting stale ACLs: {message}")
        return len(create), len(stale), len(wanted & existing)
    finally:
        conn.close()


async def ping(users: dict[str, str], ca: Path) -> str:
    """The broker as the admin sees it: it must list itself on the port we asked."""
    kafka = settings(users, acl.ADMIN, ca)
    conn = await connect(kafka)
    try:
        metadata = await conn.send(MetadataRequest([]))
    finally:
        conn.close()
    port = int(kafka.bootstrap.split(",")[0].rsplit(":", 1)[1])
    brokers = [(broker[0], broker[1], broker[2]) for broker in metadata.brokers]  # id, host, port, ...
    if not any(broker_port == port for _, _, broker_port in brokers):
        raise ValueError(f"the broker lists {brokers or 'no broker'}, none on port {port}")
    return f"brokers {brokers}"


def admin_config(users: dict[str, str], ca: Path) -> str:
    """Kafka's own tools (kafka-configs.sh --command-config) as admin on the client listener."""
    password = users[acl.ADMIN].replace("\\", "\\\\").replace('"', '\\"')
    return (
        "# the local stack's admin (kafka-configs.sh --bootstrap-server ... --command-config)\n"
        "security.protocol=SASL_SSL\n"
        f"sasl.mechanism={MECHANISM}\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{acl.ADMIN}" password="{password}";\n'
        "ssl.truststore.type=PEM\n"
        f"ssl.truststore.location={ca.resolve()}\n"
    )


def properties(users: dict[str, str], identity: str, ca: Path) -> str:
    """librdkafka (kcat, confluent-kafka) properties for one identity."""
    bootstrap = os.environ.get("MLOPS_KAFKA_SECURE_BOOTSTRAP", "127.0.0.1:9092")
    return (
        f"# {identity}'s credentials for the local stack's secured Kafka listener (librdkafka / kcat -F)\n"
        f"bootstrap.servers={bootstrap}\n"
        "security.protocol=SASL_SSL\n"
        f"sasl.mechanisms={MECHANISM}\n"
        f"sasl.username={identity}\n"
        f"sasl.password={users[identity]}\n"
        f"ssl.ca.location={ca}\n"
    )


def write_clients(users: dict[str, str], ca: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    client_ca = out / "ca.pem"
    write_private(client_ca, ca.read_text())
    for identity in (acl.UPSTREAM, acl.ADMIN):
        write_private(out / f"{identity}.properties", properties(users, identity, client_ca.resolve()))


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    command, path = argv[0], Path(argv[1])
    ca = Path(os.environ.get("MLOPS_KAFKA_CA", path.parent / "ca.pem"))
    try:
        if command == "users":
            ensure_users(path)
        elif command == "scram-args":
            for name, password in sorted(load_users(path).items()):
                print(f"{MECHANISM}=[name={name},password={password}]")
        elif command == "scram-file" and len(argv) == 4:
            write_private(Path(argv[3]), f"{MECHANISM}=password={load_users(path)[argv[2]]}\n")
        elif command == "missing-users":
            # an identity added to the table since the stack started gets its password here
            print(" ".join(asyncio.run(missing_users(ensure_users(path), ca))))
        elif command == "acls":
            created, removed, kept = asyncio.run(apply_acls(load_users(path), ca, argv[2:] or [""]))
            print(f"ACLs: {created} created, {removed} stale removed, {kept} kept")
        elif command == "password" and len(argv) == 3:
            users = load_users(path)
            if argv[2] not in users:
                print(f"kafka_secure password: {path} has no identity {argv[2]!r}", file=sys.stderr)
                return 1
            print(users[argv[2]])
        elif command == "ping":
            print(asyncio.run(ping(load_users(path), ca)))
        elif command == "admin-config" and len(argv) == 3:
            write_private(Path(argv[2]), admin_config(load_users(path), ca))
        elif command == "clients" and len(argv) == 3:
            write_clients(load_users(path), ca, Path(argv[2]))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (TimeoutError, KafkaError, OSError, ValueError) as error:
        print(f"kafka_secure {command}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
