"""The local PKI (infra/local/pki.py): a CA and a broker certificate for 127.0.0.1 that a TLS client
verifies, private files 0600, kept when valid and made anew when not."""

from __future__ import annotations

import datetime
import importlib.util
import ssl
import stat
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("mlops_local_pki", ROOT / "infra/local/pki.py")
pki = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = pki
_spec.loader.exec_module(pki)

PRIVATE = ("ca.key", "broker.key", "broker.p12", "broker.p12.password", "s3.key")


@pytest.fixture
def root(tmp_path) -> Path:
    """The PKI directory; the people's files go beside it, in clients/."""
    return tmp_path / "pki"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_fresh_directory_gets_a_ca_and_a_broker_certificate_with_private_keys(root) -> None:
    made = pki.ensure(root)
    leaves = [f"grpc/{service}.{ext}" for service in pki.SERVICES for ext in ("pem", "key")]
    people = [f"clients/{person}.{ext}" for person in pki.PEOPLE for ext in ("pem", "key", "token")]
    assert set(made) == {
        *("ca.pem", "ca.key", "broker.pem", "broker.key", "broker.p12", "broker.p12.password"),
        *("postgres.pem", "postgres.key", "s3.pem", "s3.key", "grpc/tokens", *leaves, *people),
    }
    assert mode(root) == 0o700
    for name in PRIVATE:
        assert mode(root / name) == 0o600, name
    broker = x509.load_pem_x509_certificate((root / "broker.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((root / "ca.pem").read_bytes())
    broker.verify_directly_issued_by(ca)
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]


def test_a_client_trusting_the_ca_verifies_the_broker_for_127_0_0_1(root) -> None:
    pki.ensure(root)
    client = ssl.create_default_context(cafile=str(root / "ca.pem"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(root / "broker.pem", root / "broker.key")
    client_in, client_out, server_in, server_out = (
        ssl.MemoryBIO(),
        ssl.MemoryBIO(),
        ssl.MemoryBIO(),
        ssl.MemoryBIO(),
    )
    c = client.wrap_bio(client_in, client_out, server_hostname="127.0.0.1")
    s = server.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):  # a handshake in memory: a few round trips, no sockets, no clock
        for name, side, out, peer_in in (
            ("client", c, client_out, server_in),
            ("server", s, server_out, client_in),
        ):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            break
    assert all(done.values())
    assert c.getpeercert()["subjectAltName"] == (("IP Address", "127.0.0.1"), ("DNS", "localhost"))


def test_the_keystore_holds_the_broker_key_and_chain_under_its_password(root) -> None:
    pki.ensure(root)
    stored = pkcs12.load_pkcs12(
        (root / "broker.p12").read_bytes(), (root / "broker.p12.password").read_bytes()
    )
    assert stored.cert.certificate == x509.load_pem_x509_certificate((root / "broker.pem").read_bytes())
    assert [c.certificate for c in stored.additional_certs] == [
        x509.load_pem_x509_certificate((root / "ca.pem").read_bytes())
    ]


def test_valid_files_are_kept_and_modes_repaired(root) -> None:
    pki.ensure(root)
    before = {p: p.read_bytes() for p in root.parent.rglob("*") if p.is_file()}
    (root / "ca.key").chmod(0o644)
    (root / "grpc" / "deployer.key").chmod(0o644)
    assert pki.ensure(root) == []
    assert {p: p.read_bytes() for p in root.parent.rglob("*") if p.is_file()} == before
    assert mode(root / "ca.key") == 0o600 and mode(root / "grpc" / "deployer.key") == 0o600


def test_a_broken_broker_certificate_is_remade_under_the_same_ca(root) -> None:
    pki.ensure(root)
    ca = (root / "ca.pem").read_bytes()
    (root / "broker.pem").write_text("not a certificate")
    assert "broker.pem" in pki.ensure(root)
    assert (root / "ca.pem").read_bytes() == ca
    x509.load_pem_x509_certificate((root / "broker.pem").read_bytes()).verify_directly_issued_by(
        x509.load_pem_x509_certificate(ca)
    )


def test_a_new_ca_brings_a_new_broker_certificate(root) -> None:
    pki.ensure(root)
    (root / "ca.key").unlink()
    made = pki.ensure(root)
    assert {"ca.pem", "ca.key", "broker.pem"} <= set(made)


def test_a_certificate_close_to_its_end_is_renewed(root, monkeypatch) -> None:
    pki.ensure(root)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=pki.BROKER_DAYS) - pki.RENEW_BEFORE
    monkeypatch.setattr(pki, "_now", lambda: later)
    made = pki.ensure(root)
    assert "broker.pem" in made and "ca.pem" not in made


def test_a_lost_keystore_password_remakes_only_the_keystore(root) -> None:
    pki.ensure(root)
    (root / "broker.p12.password").write_text("wrong")
    assert pki.ensure(root) == ["broker.p12", "broker.p12.password"]


def test_each_service_and_person_gets_an_identity_the_grpc_layer_reads(root) -> None:
    from mlops.identity import Role, TokenBook, principal_from_certificate

    pki.ensure(root)
    ca = x509.load_pem_x509_certificate((root / "ca.pem").read_bytes())
    for service in pki.SERVICES:
        pem = (root / "grpc" / f"{service}.pem").read_bytes()
        x509.load_pem_x509_certificate(pem).verify_directly_issued_by(ca)
        assert principal_from_certificate(pem).name == f"svc:{service}"
        assert principal_from_certificate(pem).role is Role.SERVICE
        assert mode(root / "grpc" / f"{service}.key") == 0o600
    book = TokenBook.load(root / "grpc" / "tokens")
    clients = root.parent / "clients"
    for person, role in pki.PEOPLE.items():
        assert principal_from_certificate((clients / f"{person}.pem").read_bytes()).role is Role(role)
        token = (clients / f"{person}.token").read_text()
        assert mode(clients / f"{person}.token") == 0o600
        assert book.principal(token).name == f"user:{person}"
    assert token not in (root / "grpc" / "tokens").read_text(), "the servers hold digests, not tokens"


def test_tokens_are_kept_across_runs_and_a_new_ca_brings_new_service_certificates(root) -> None:
    pki.ensure(root)
    token = (root.parent / "clients" / "admin.token").read_text()
    (root / "ca.key").unlink()
    made = pki.ensure(root)
    assert {"grpc/registry.pem", "clients/admin.pem", "postgres.pem"} <= set(made)
    assert "clients/admin.token" not in made
    assert (root.parent / "clients" / "admin.token").read_text() == token
