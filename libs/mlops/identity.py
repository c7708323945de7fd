"""Who is calling: principals, roles, and the two ways to prove an identity (certificate or token).

Transport-free on purpose: the gRPC interceptor, a future REST front and the CLI all turn their own
credentials into the same `Principal`, and the ledgers record `Principal.name`, never a name the
caller typed.

Names are `svc:<service>` for the platform's own services and `user:<name>` for people and upstream
systems. Roles: viewer < operator < admin for people; `service` stands apart (a service may call what
the design says it calls, see `mlops.grpc.access`).
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

from mlops.errors import InvalidArgument

NAME = re.compile(r"^(svc|user):[a-z0-9][a-z0-9._@-]{0,63}$")
MAX_TOKEN_CHARS = 4096
"""Longer bearer values are refused before hashing: no real token is that long."""
MAX_TOKEN_FILE_BYTES = 1024 * 1024


class Role(enum.StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    SERVICE = "service"

    @classmethod
    def parse(cls, value: str, *, where: str) -> Role:
        try:
            return cls(value.strip().lower())
        except ValueError:
            choices = ", ".join(role.value for role in cls)
            raise InvalidArgument(f"{where}: unknown role {value!r}; expected one of {choices}") from None

    def at_least(self, least: Role) -> bool:
        """True when this human role is `least` or above it; `service` is never ranked among them."""
        if self is Role.SERVICE or least is Role.SERVICE:
            return self is least
        return _RANK[self] >= _RANK[least]


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}

Via = Literal["certificate", "token"]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: `name` is what ledgers record, `via` how it proved the name."""

    name: str
    role: Role
    via: Via

    def __post_init__(self) -> None:
        check_name(self.name, self.role, where="principal")

    @property
    def service(self) -> str | None:
        """The service's own name (`deployer` for `svc:deployer`), None for a person."""
        return self.name.removeprefix("svc:") if self.role is Role.SERVICE else None

    def __str__(self) -> str:
        return f"{self.name} ({self.role.value})"


def check_name(name: str, role: Role, *, where: str) -> None:
    """Refuse a malformed name, and a name whose kind disagrees with its role (`svc:` ⇔ service)."""
    if not NAME.match(name):
        raise InvalidArgument(
            f"{where}: identity {name!r} must be 'svc:<service>' or 'user:<name>' "
            "(lower case letters, digits, . _ @ -; at most 64 after the colon)"
        )
    if name.startswith("svc:") != (role is Role.SERVICE):
        raise InvalidArgument(
            f"{where}: identity {name!r} cannot have role {role.value}: "
            "'svc:' names have role service, and only they do"
        )


def principal_from_certificate(pem: bytes, *, roles: Mapping[str, Role] | None = None) -> Principal:
    """The principal a verified client certificate names: its subject CN, its role from `roles`
    (configured, wins) or else from the subject's OU. The TLS layer has already checked the chain."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as error:
        raise InvalidArgument(f"client certificate: not a PEM certificate ({error})") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise InvalidArgument(f"client certificate {cert.subject.rfc4514_string()!r}: needs exactly one CN")
    name = str(names[0].value)
    where = f"client certificate {name!r}"
    if roles and name in roles:
        role = roles[name]
    else:
        units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        if len(units) != 1:
            raise InvalidArgument(
                f"{where}: no role: give the subject one OU (viewer, operator, admin, service) "
                "or map the name in MLOPS_GRPC_CERT_ROLES"
            )
        role = Role.parse(str(units[0].value), where=where)
    check_name(name, role, where=where)
    return Principal(name, role, "certificate")


def token_digest(token: str) -> str:
    """The hex sha256 a token file holds in place of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_line(token: str, name: str, role: Role) -> str:
    """One line of a token file for `token` (what a tool that issues tokens writes)."""
    check_name(name, role, where="token")
    return f"{token_digest(token)} {name} {role.value}"


class TokenBook:
    """Bearer tokens by their sha256 → (name, role). Only digests are held: a leaked process image or
    log line gives no token, and a presented token lives no longer than its hashing."""

    def __init__(self, entries: Mapping[str, tuple[str, Role]]) -> None:
        # one Principal per token, made once: a call costs a hash and a lookup
        self._principals = {
            digest: Principal(name, role, "token") for digest, (name, role) in entries.items()
        }

    def __len__(self) -> int:
        return len(self._principals)

    @classmethod
    def parse(cls, text: str, *, source: str = "token file") -> TokenBook:
        """Lines `<sha256 hex> <identity> <role>`; blank lines and `#` comments are skipped."""
        entries: dict[str, tuple[str, Role]] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{source} line {number}"
            fields = line.split()
            if len(fields) != 3:
                raise InvalidArgument(
                    f"{where}: expected '<sha256 hex> <identity> <role>', got {len(fields)} fields"
                )
            digest, name, role_text = fields
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise InvalidArgument(
                    f"{where}: {digest[:8]}… is not a lower-case hex sha256 (64 characters)"
                )
            role = Role.parse(role_text, where=where)
            check_name(name, role, where=where)
            if digest in entries:
                raise InvalidArgument(f"{where}: the same token digest is listed twice")
            entries[digest] = (name, role)
        return cls(entries)

    @classmethod
    def load(cls, path: Path) -> TokenBook:
        try:
            size = path.stat().st_size
            if size > MAX_TOKEN_FILE_BYTES:
                raise InvalidArgument(f"token file {path}: {size} bytes, more than {MAX_TOKEN_FILE_BYTES}")
            text = path.read_text()
        except OSError as error:
            raise InvalidArgument(f"token file {path}: cannot be read ({error.strerror})") from None
        return cls.parse(text, source=f"token file {path}")

    def principal(self, token: str) -> Principal | None:
        """The principal whose token this is, or None for an unknown (or absurdly long) token."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        return self._principals.get(token_digest(token))


def bearer_token(header: str) -> str | None:
    """The token of an `authorization` value `Bearer <token>`; None for any other scheme or shape."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


_CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("mlops_principal", default=None)


def current_principal() -> Principal | None:
    """The authenticated caller of the request being handled; None where the server checks no
    credentials (security off, health checks) or outside a request."""
    return _CURRENT.get()


MAX_CLAIMED_ACTOR_CHARS = 128


def recorded_actor(claimed: str) -> str:
    """Who a ledger records for a change: the authenticated caller, never a name the caller typed.

    A person is recorded as themselves whatever `actor` they sent. A service may act for a person it
    authenticated itself (the deployer promoting for an operator): `<claimed> via svc:<service>`, so
    that both are on record. Where the server checks no credentials (a core served without security,
    as some tests do), the claim, or "unknown"."""
    principal = current_principal()
    claimed = claimed.strip()[:MAX_CLAIMED_ACTOR_CHARS]
    if principal is None:
        return claimed or "unknown"
    if principal.role is Role.SERVICE and claimed and claimed != principal.name:
        return f"{claimed} via {principal.name}"
    return principal.name


@contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    """Make `principal` the current one for the duration of the block (the server's interceptor does
    this around each call; tests and Kafka handlers acting for a known identity may too)."""
    token = _CURRENT.set(principal)
    try:
        yield
    finally:
        _CURRENT.reset(token)
