"""The local stack's certificate authority and the Kafka broker's certificate, made once, kept while valid.

    python infra/local/pki.py DIR      # DIR is <stack>/pki; prints one line per file it (re)made

What it leaves in DIR (keys and the keystore mode 0600, the directory 0700):
    ca.pem, ca.key                    the CA that clients trust (copied to <stack>/clients/ca.pem)
    broker.pem, broker.key            the broker's certificate (127.0.0.1 and localhost) and key
    broker.p12, broker.p12.password   the same as a PKCS#12 keystore for the JVM, and its password

Idempotent: files that are present and valid are kept, so that clients holding ca.pem keep
trusting the broker across restarts. Valid means: parseable, the key matches the certificate,
more than RENEW_BEFORE left, and for the broker, signed by the current CA and naming every
address in BROKER_NAMES. A CA that is invalid is made anew, and with it the broker's certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
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

CA_DAYS = 3650
BROKER_DAYS = 825  # the longest leaf lifetime browsers and most TLS stacks still accept
RENEW_BEFORE = datetime.timedelta(days=30)
BROKER_NAMES = ("127.0.0.1", "localhost")


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
    def keystore(self) -> Path:
        return self.root / "broker.p12"

    @property
    def keystore_password(self) -> Path:
        return self.root / "broker.p12.password"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def write_private(path: Path, data: bytes) -> None:
    """Create or replace `path` with mode 0600 from the start (no moment where others could read it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


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
    return made


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: pki.py DIR", file=sys.stderr)
        return 2
    for name in ensure(Path(argv[0])):
        print(f"made {Path(argv[0]) / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
