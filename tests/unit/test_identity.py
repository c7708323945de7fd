"""Principals: names and roles, from certificates and from token files; the current principal."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mlops.errors import InvalidArgument
from mlops.identity import (
    MAX_TOKEN_CHARS,
    Principal,
    Role,
    TokenBook,
    acting_as,
    bearer_token,
    current_principal,
    principal_from_certificate,
    token_digest,
    token_line,
)


def certificate(cn: str | None, *units: str) -> bytes:
    """A self-signed PEM certificate with that subject: the TLS layer verifies chains, not this code."""
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
    attributes += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit) for unit in units]
    name = x509.Name(attributes or [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mlops")])
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_roles_rank_people_and_keep_services_apart():
    assert Role.ADMIN.at_least(Role.OPERATOR) and Role.OPERATOR.at_least(Role.OPERATOR)
    assert not Role.VIEWER.at_least(Role.OPERATOR)
    assert not Role.SERVICE.at_least(Role.VIEWER)
    assert not Role.ADMIN.at_least(Role.SERVICE)


def test_a_certificate_names_the_principal_by_cn_and_its_role_by_ou():
    assert principal_from_certificate(certificate("user:alice", "operator")) == Principal(
        "user:alice", Role.OPERATOR, "certificate"
    )
    assert principal_from_certificate(certificate("svc:deployer", "service")).service == "deployer"


def test_a_configured_role_wins_over_the_ou_and_stands_in_for_a_missing_one():
    roles = {"user:alice": Role.ADMIN}
    assert principal_from_certificate(certificate("user:alice", "viewer"), roles=roles).role is Role.ADMIN
    assert principal_from_certificate(certificate("user:alice"), roles=roles).role is Role.ADMIN


@pytest.mark.parametrize(
    ("pem", "problem"),
    [
        (certificate(None, "admin"), "needs exactly one CN"),
        (certificate("user:alice"), "no role: give the subject one OU"),
        (certificate("user:alice", "root"), "unknown role 'root'"),
        (certificate("alice", "admin"), "must be 'svc:<service>' or 'user:<name>'"),
        (certificate("user:mallory", "service"), "cannot have role service"),
        (certificate("svc:trainer", "admin"), "cannot have role admin"),
        (b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n", "not a PEM certificate"),
    ],
)
def test_a_certificate_without_a_clear_identity_is_refused_with_the_reason(pem, problem):
    with pytest.raises(InvalidArgument, match=problem):
        principal_from_certificate(pem)


def test_a_token_book_holds_digests_and_finds_the_principal_of_a_token():
    text = "\n".join(
        [
            "# issued 2026-12-07",
            token_line("s3cret-alice", "user:alice", Role.VIEWER),
            "",
            f"{token_digest('s3cret-bob')}  user:bob  operator  # on call",
        ]
    )
    book = TokenBook.parse(text)
    assert len(book) == 2
    assert "s3cret" not in repr(book.__dict__)
    assert book.principal("s3cret-alice") == Principal("user:alice", Role.VIEWER, "token")
    assert book.principal("s3cret-bob").role is Role.OPERATOR
    assert book.principal("s3cret-carol") is None
    assert book.principal("") is None
    assert book.principal("x" * (MAX_TOKEN_CHARS + 1)) is None


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("abc user:alice viewer", "is not a lower-case hex sha256"),
        (f"{'a' * 64} user:alice", "expected '<sha256 hex> <identity> <role>', got 2 fields"),
        (f"{'a' * 64} user:alice superuser", "unknown role 'superuser'"),
        (f"{'a' * 64} svc:alice viewer", "cannot have role viewer"),
        (f"{'a' * 64} user:alice viewer\n{'a' * 64} user:bob viewer", "line 2: the same token digest"),
    ],
)
def test_a_malformed_token_file_names_the_line_and_the_problem(line, problem):
    with pytest.raises(InvalidArgument, match=problem) as caught:
        TokenBook.parse(line, source="tokens.txt")
    assert "tokens.txt line" in caught.value.message


def test_a_missing_token_file_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidArgument, match=r"token file .*absent: cannot be read"):
        TokenBook.load(tmp_path / "absent")


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), ("", None)],
)
def test_only_the_bearer_scheme_gives_a_token(header, token):
    assert bearer_token(header) == token


def test_the_current_principal_is_set_for_the_block_only():
    alice = Principal("user:alice", Role.VIEWER, "token")
    assert current_principal() is None
    with acting_as(alice):
        assert current_principal() is alice
    assert current_principal() is None


def test_a_principal_refuses_a_malformed_name():
    with pytest.raises(InvalidArgument, match="must be 'svc:<service>'"):
        Principal("User:Alice", Role.VIEWER, "token")


def test_a_ledger_records_the_authenticated_caller_not_the_name_it_typed():
    from mlops.identity import acting_as, recorded_actor

    operator = Principal("user:olga", Role.OPERATOR, "token")
    deployer = Principal("svc:deployer", Role.SERVICE, "certificate")
    with acting_as(operator):
        assert recorded_actor("somebody-else") == "user:olga"
        assert recorded_actor("") == "user:olga"
    with acting_as(deployer):
        assert recorded_actor("user:olga") == "user:olga via svc:deployer"
        assert recorded_actor("svc:deployer") == "svc:deployer"
        assert recorded_actor("") == "svc:deployer"
        assert len(recorded_actor("x" * 10_000)) == 128 + len(" via svc:deployer")
    assert recorded_actor("typed") == "typed" and recorded_actor("  ") == "unknown"
