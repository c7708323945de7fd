"""The local stack's random credentials for PostgreSQL and S3, made on the first `up` (run by stack.sh).

    local_secrets.py create FILE   make FILE (0600) when missing, add missing entries; print them
    local_secrets.py read FILE     print them; nothing when FILE does not exist yet

One `name value` line per secret: `pg_password` (the application role's password) and
`s3_secret_key` (versitygw's root secret key). They are made once and kept, so that data and
clients of an existing stack keep working; delete the file (and `stack.sh up`) to change them.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

NAMES = ("pg_password", "s3_secret_key")


def write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, str]:
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as error:
        raise SystemExit(f"{path} is not JSON ({error}): repair or delete it (new credentials)") from None
    if not isinstance(values, dict) or not all(isinstance(v, str) and v for v in values.values()):
        raise SystemExit(f"{path} must map each secret's name to a non-empty string")
    return values


def ensure(path: Path) -> dict[str, str]:
    values = load(path)
    missing = [name for name in NAMES if name not in values]
    if missing:
        # token_urlsafe: nothing a URL, a shell line or SQL quoting would need to escape
        values |= {name: secrets.token_urlsafe(24) for name in missing}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        write_private(path, json.dumps(values, indent=2, sort_keys=True) + "\n")
    path.chmod(0o600)
    return values


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("create", "read"):
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[1])
    values = ensure(path) if argv[0] == "create" else load(path)
    for name in NAMES:
        if name in values:
            print(name, values[name])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
