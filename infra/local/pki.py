"""The local stack's certificate authority and the Kafka broker's certificate, made once, kept while valid.

    python infra/local/pki.py DIR      # DIR is <stack>/pki; prints one line per file it (re)made

What it leaves in DIR (keys, tokens and the keystore mode 0600, the directory 0700):
    ca.pem, ca.key                    the CA that clients trust (copied to <stack>/clients/ca.pem)
    broker.pem, broker.key            the broker's certificate (127.0.0.1 and localhost) and key
    broker.p12, broker.p12.password   the same as a PKCS#12 keystore for the JVM, and its password
    postgres.pem, postgres.key        PostgreSQL's server certificate (127.0.0.1 and localhost)
    s3.pem, s3.key                    the S3 server's (versitygw) certificate (127.0.0.1 and localhost)
    grpc/<service>.pem, .key          each service's identity, CN svc:<service> OU service: its gRPC
                                      server certificate (127.0.0.1, localhost) and its client one
    grpc/tokens                       the people's bearer tokens as sha256 digests, for the servers

and in DIR/../clients, for people (the CLI's context `local` uses admin's):
    <person>.pem, <person>.key        a client certificate, CN user:<person>, OU its role
    <person>.token                    a bearer token of the same identity and role
for the people in PEOPLE (admin, operator, viewer).

Idempotent: files that are present and valid are kept, so that clients holding ca.pem keep
trusting the broker across restarts. Valid means: parseable, the key matches the certificate,
more than RENEW_BEFORE left, and for the broker, signed by the current CA and naming every
address in BROKER_NAMES. A CA that is invalid is made anew, and with it the broker's certificate.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mlops.private_files import write_private

CA_DAYS = 3650
BROKER_DAYS = 825  # the longest leaf lifetime browsers and most TLS stacks still accept
RENEW_BEFORE = datetime.timedelta(days=30)
BROKER_NAMES = ("127.0.0.1", "localhost")
SERVER_NAMES = BROKER_NAMES
SERVICES = ("registry", "trainer", "evaluator", "deployer", "monitor", "inference")
PEOPLE = {"admin": "admin", "operator": "operator", "viewer": "viewer"}
"""The local stack's people: name → role (viewer reads, operator moves rollouts and aliases, admin all)."""


@dataclass(frozen=True)
class Pki:
    """The paths of one PKI directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def broker_cert(self) -> Path:
        return self.root / "broker.pem"

    @property
    def broker_key(self) -> Path:
        return self.root / "broker.key"

    @property
    def grpc(self) -> Path:
        return self.root / "grpc"

    @property
    def clients(self) -> Path:
        return self.root.parent / "clients"

    @property
    def tokens(self) -> Path:
        return self.grpc / "tokens"

    @property
    def keystore(self) -> Path:
        return self.root / "broker.p12"

    @property
    def keystore_password(self) -> Path:
        return self.root / "broker.p12.password"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    if cert.not_valid_after_utc - _now() < RENEW_BEFORE or cert.not_valid_before_utc > _now():
        return None
    return cert, key


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )


def _make_ca(pki: Pki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mlops local CA {secrets.token_hex(4)}")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(pki.ca_key, _key_pem(key))
    pki.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _make_broker(pki: Pki, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    alt_names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(n)) for n in BROKER_NAMES[:1]]
    alt_names += [x509.DNSName(n) for n in BROKER_NAMES[1:]]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlops kafka broker")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=BROKER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_private(pki.broker_key, _key_pem(key))
    pki.broker_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _make_keystore(pki, cert, key, ca)


def _subject(cn: str, ou: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if ou:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    return x509.Name(attributes)


def _issue_leaf(
    cert_path: Path,
    key_path: Path,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    cn: str,
    ou: str | None = None,
    server: bool = False,
    client: bool = False,
) -> None:
    """A certificate for `cn` (and `ou`), for TLS servers at SERVER_NAMES and/or TLS clients."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(cn, ou))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=BROKER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        alt_names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(SERVER_NAMES[0]))]
        alt_names += [x509.DNSName(n) for n in SERVER_NAMES[1:]]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_path.parent.mkdir(parents=True, exist_ok=True)
    write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _leaf_ok(
    cert_path: Path, key_path: Path, ca: x509.Certificate, *, cn: str, ou: str | None, server: bool
) -> bool:
    loaded = _load(cert_path, key_path)
    if loaded is None or not _signed_by(loaded[0], ca) or loaded[0].subject != _subject(cn, ou):
        return False
    return not server or set(SERVER_NAMES) <= _names(loaded[0])


def _ensure_leaf(
    made: list[str],
    cert_path: Path,
    key_path: Path,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    cn: str,
    ou: str | None = None,
    server: bool = False,
    client: bool = False,
) -> None:
    if not _leaf_ok(cert_path, key_path, ca[0], cn=cn, ou=ou, server=server):
        _issue_leaf(cert_path, key_path, *ca, cn=cn, ou=ou, server=server, client=client)
        made += [_name(cert_path), _name(key_path)]
    key_path.chmod(0o600)


def _name(path: Path) -> str:
    """How `ensure` names a file it made: relative to the PKI directory (`grpc/registry.pem`), the
    people's files by their folder (`clients/admin.pem`)."""
    return f"{path.parent.name}/{path.name}" if path.parent.name in ("grpc", "clients") else path.name


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _ensure_tokens(pki: Pki, made: list[str]) -> None:
    """A token per person (kept while its file is there), and the digest file the servers read."""
    lines = []
    for person, role in PEOPLE.items():
        path = pki.clients / f"{person}.token"
        try:
            token = path.read_text().strip()
        except OSError:
            token = ""
        if len(token) < 32:
            token = secrets.token_urlsafe(32)
            write_private(path, token.encode())
            made.append(_name(path))
        path.chmod(0o600)
        lines.append(f"{_token_digest(token)} user:{person} {role}")
    text = (
        "# sha256 of each bearer token, its identity and role (infra/local/pki.py)\n"
        + "\n".join(lines)
        + "\n"
    )
    if not pki.tokens.exists() or pki.tokens.read_text() != text:
        write_private(pki.tokens, text.encode())
        made.append(_name(pki.tokens))


def _make_keystore(
    pki: Pki, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> None:
    # the JVM's PKCS#12 keystore needs a password; it lives beside it, as private as the key
    password = secrets.token_urlsafe(24)
    data = pkcs12.serialize_key_and_certificates(
        b"broker", key, cert, [ca], serialization.BestAvailableEncryption(password.encode())
    )
    write_private(pki.keystore_password, password.encode())
    write_private(pki.keystore, data)


def _keystore_ok(pki: Pki, cert: x509.Certificate) -> bool:
    try:
        password = pki.keystore_password.read_bytes()
        stored = pkcs12.load_pkcs12(pki.keystore.read_bytes(), password)
    except (OSError, ValueError):
        return False
    return stored.cert is not None and stored.cert.certificate == cert


def ensure(root: Path) -> list[str]:
    """Make what is missing or invalid under `root`; returns the names of the files (re)made."""
    pki = Pki(root)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    made: list[str] = []
    ca = _load(pki.ca_cert, pki.ca_key)
    if ca is None or ca[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca is not True:
        ca = _make_ca(pki)
        made += [pki.ca_cert.name, pki.ca_key.name]
    broker = _load(pki.broker_cert, pki.broker_key)
    if broker is None or not _signed_by(broker[0], ca[0]) or not set(BROKER_NAMES) <= _names(broker[0]):
        _make_broker(pki, *ca)
        made += [pki.broker_cert.name, pki.broker_key.name, pki.keystore.name, pki.keystore_password.name]
    elif not _keystore_ok(pki, broker[0]):
        _make_keystore(pki, broker[0], broker[1], ca[0])
        made += [pki.keystore.name, pki.keystore_password.name]
    for path in (pki.ca_key, pki.broker_key, pki.keystore, pki.keystore_password):
        path.chmod(0o600)  # also for files an older run or a copy left with wider modes
    _ensure_leaf(made, root / "postgres.pem", root / "postgres.key", ca, cn="mlops postgres", server=True)
    _ensure_leaf(made, root / "s3.pem", root / "s3.key", ca, cn="mlops s3", server=True)
    pki.grpc.mkdir(mode=0o700, exist_ok=True)
    for service in SERVICES:
        _ensure_leaf(
            made,
            pki.grpc / f"{service}.pem",
            pki.grpc / f"{service}.key",
            ca,
            cn=f"svc:{service}",
            ou="service",
            server=True,
            client=True,
        )
    pki.clients.mkdir(mode=0o700, exist_ok=True)
    write_private(pki.clients / "ca.pem", pki.ca_cert.read_bytes())
    for person, role in PEOPLE.items():
        _ensure_leaf(
            made,
            pki.clients / f"{person}.pem",
            pki.clients / f"{person}.key",
            ca,
            cn=f"user:{person}",
            ou=role,
            client=True,
        )
    _ensure_tokens(pki, made)
    return made


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: pki.py DIR", file=sys.stderr)
        return 2
    for name in ensure(Path(argv[0])):
        print(f"made {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
