"""PostgreSQL roles of the local stack: one per service, with rights on its own schema only (run by stack.sh).

    pg_roles.py roles  --pki DIR --operator NAME --database NAME --host H --port P   SQL on stdout
    pg_roles.py grants (same options)                                               SQL on stdout
    pg_roles.py urls   (same options)                                               writes the URL files

`roles` (for the database `postgres`, as the superuser) creates or updates the operator's role and a
LOGIN role per service in SERVICES, each with its password, set as a SCRAM verifier so that no
password is in the SQL, in a command line or in the server's log. The services' passwords are
random, made once into DIR/pg-users.json (0600) and kept; the operator's comes in
`MLOPS_PG_PASSWORD` (the environment, not the command line).

`grants` (for the application database, as the superuser) gives each service's role CONNECT on that
database and nothing on another, makes it the owner of its schema and of everything in it (a schema
an older stack let the operator create is handed over), revokes every right on `public`, and makes
the operator a member of every service role: tests migrate and read each service's schema
in-process as the operator, and tables it creates there are granted to the service by default.

`urls` writes DIR/pg/<service>.url (directory 0700, files 0600), the service's MLOPS_DATABASE_URL,
which services.sh exports: TLS verified against the stack's CA (libpq's spelling, see
`mlops.settings.DatabaseSettings`).

Each schema is named after its service (`SCHEMA` in services/<name>/tables.py; a test holds the two
to agreement). A service role may connect and use its own schema, nothing more: no CREATE on the
database (the migrations create a schema only when it is missing, `mlops.db.migrations.create_schema_sql`).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import unicodedata
import urllib.parse
from pathlib import Path

from mlops.private_files import write_private

SERVICES = ("registry", "trainer", "evaluator", "deployer", "monitor")
"""The services with a database, each with its role and its schema of the same name."""
SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)


def passwords(pki: Path) -> dict[str, str]:
    """Each service role's password from DIR/pg-users.json; missing ones are made and saved."""
    path = pki / "pg-users.json"
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        values = {}
    except json.JSONDecodeError as error:
        raise SystemExit(f"{path} is not JSON ({error}): repair or delete it (new passwords)") from None
    if not isinstance(values, dict) or not all(isinstance(v, str) and v for v in values.values()):
        raise SystemExit(f"{path} must map each service to a non-empty password")
    missing = [name for name in SERVICES if name not in values]
    if missing:
        # token_urlsafe: nothing a URL or SQL quoting would need to escape
        values |= {name: secrets.token_urlsafe(24) for name in missing}
        pki.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, json.dumps(values, indent=2, sort_keys=True) + "\n")
    path.chmod(0o600)
    return values


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802, RFC 7677)."""
    salt = salt or secrets.token_bytes(16)
    # SASLprep, as PostgreSQL applies it: NFKC (the identity for the ASCII passwords made here)
    normalised = unicodedata.normalize("NFKC", password).encode()
    salted = hashlib.pbkdf2_hmac("sha256", normalised, salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _role(name: str, password: str, attributes: str) -> str:
    return (
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {literal(name)}) THEN "
        f"CREATE ROLE {ident(name)}; END IF; END $$;\n"
        f"ALTER ROLE {ident(name)} {attributes} PASSWORD {literal(scram_verifier(password))};\n"
    )


def roles_sql(pki: Path, operator: str) -> str:
    operator_password = os.environ.get("MLOPS_PG_PASSWORD", "")
    if not operator_password:
        raise SystemExit("MLOPS_PG_PASSWORD (the operator's password) is not set")
    if operator in SERVICES:
        raise SystemExit(f"the operator's role cannot be named after a service ({operator})")
    sql = ["SET client_min_messages = warning;\nBEGIN;\n", _role(operator, operator_password, "LOGIN")]
    for service, password in passwords(pki).items():
        if service in SERVICES:
            sql.append(
                _role(
                    service, password, "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
                )
            )
    # no role reaches the maintenance databases: CONNECT is granted on the application's alone
    sql.append("REVOKE CONNECT, TEMPORARY ON DATABASE postgres, template1 FROM PUBLIC;\nCOMMIT;\n")
    return "".join(sql)


# Everything in `schema` that its service's role does not own yet (an older stack migrated as the
# operator), handed over. Sequences that belong to a column move with their table.
_HANDOVER = """DO $$
DECLARE
  item record;
BEGIN
  FOR item IN
    SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
             WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END AS kind, c.oid::regclass::text AS name
    FROM pg_class c
    WHERE c.relnamespace = {schema}::regnamespace AND c.relowner <> {role}::regrole
      AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
      AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
    UNION ALL
    SELECT CASE t.typtype WHEN 'e' THEN 'TYPE' ELSE 'DOMAIN' END, format_type(t.oid, NULL)
    FROM pg_type t
    WHERE t.typnamespace = {schema}::regnamespace AND t.typowner <> {role}::regrole AND t.typtype IN ('e', 'd')
    UNION ALL
    SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, p.oid::regprocedure::text
    FROM pg_proc p
    WHERE p.pronamespace = {schema}::regnamespace AND p.proowner <> {role}::regrole AND p.prokind IN ('f', 'p')
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO %I', item.kind, item.name, {role});
  END LOOP;
END $$;
"""


def grants_sql(operator: str, database: str) -> str:
    db, op = ident(database), ident(operator)
    sql = [
        "SET client_min_messages = warning;\nBEGIN;\n",
        f"REVOKE ALL ON DATABASE {db} FROM PUBLIC;\n",
        "REVOKE ALL ON SCHEMA public FROM PUBLIC;\n",
    ]
    for service in SERVICES:
        role = ident(service)
        others = ", ".join([op] + [ident(other) for other in SERVICES if other != service])
        sql += [
            f"REVOKE CREATE, TEMPORARY ON DATABASE {db} FROM {role};\n",
            f"GRANT CONNECT ON DATABASE {db} TO {role};\n",
            f"CREATE SCHEMA IF NOT EXISTS {role} AUTHORIZATION {role};\n",
            f"ALTER SCHEMA {role} OWNER TO {role};\n",
            _HANDOVER.format(schema=literal(service), role=literal(service)),
            # whatever was granted on it to anyone (by hand, say) goes; the operator's way in is membership
            f"REVOKE ALL ON SCHEMA {role} FROM PUBLIC, {others};\n",
            f"REVOKE ALL ON ALL TABLES IN SCHEMA {role} FROM PUBLIC, {others};\n",
            f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {role} FROM PUBLIC, {others};\n",
            f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {role} FROM PUBLIC, {others};\n",
            f"GRANT {role} TO {op};\n",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {op} IN SCHEMA {role} GRANT ALL ON TABLES TO {role};\n",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {op} IN SCHEMA {role} GRANT ALL ON SEQUENCES TO {role};\n",
        ]
    sql.append("COMMIT;\n")
    return "".join(sql)


def database_url(*, user: str, password: str, host: str, port: int, database: str, ca: Path) -> str:
    """An MLOPS_DATABASE_URL over TLS that verifies the server's certificate and name against `ca`."""
    quote = urllib.parse.quote
    query = urllib.parse.urlencode({"sslmode": "verify-full", "sslrootcert": str(ca)}, quote_via=quote)
    return (
        f"postgresql+asyncpg://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}"
        f"/{quote(database, safe='')}?{query}"
    )


def write_urls(pki: Path, host: str, port: int, database: str) -> list[Path]:
    folder = pki / "pg"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    written = []
    for service, password in passwords(pki).items():
        if service not in SERVICES:
            continue
        path = folder / f"{service}.url"
        url = database_url(
            user=service, password=password, host=host, port=port, database=database, ca=pki / "ca.pem"
        )
        if not path.exists() or path.read_text() != url + "\n":
            write_private(path, url + "\n")
        path.chmod(0o600)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("roles", "grants", "urls"))
    parser.add_argument("--pki", type=Path, required=True)
    parser.add_argument("--operator", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    args = parser.parse_args(argv)
    if args.command == "roles":
        sys.stdout.write(roles_sql(args.pki, args.operator))
    elif args.command == "grants":
        sys.stdout.write(grants_sql(args.operator, args.database))
    else:
        write_urls(args.pki, args.host, args.port, args.database)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
