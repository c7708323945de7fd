"""S3 accounts of the local stack: one per service, held by the bucket's policy to what it needs (run by stack.sh).

    s3_accounts.py apply --pki DIR --endpoint URL [--ca FILE] --bucket NAME [--region R]

versitygw runs with its internal IAM (`--iam-dir`). `apply`, as the root account (its keys in
ROOT_ACCESS_KEY_ID / ROOT_SECRET_ACCESS_KEY: the environment, never the command line), makes the
server agree with ACCOUNTS, idempotently (over https, the server's certificate verified against
FILE: the stack's CA):

- an account of role `user` per service, its access key the service's name and its secret random,
  made once into DIR/s3-users.json (0600) and kept; an account the table does not name is deleted,
  so the table is the whole list (the root account is not an IAM account and stays);
- the bucket's policy, which allows each account the operations the table gives it on the keys
  under each prefix (`arn:aws:s3:::<bucket>/<prefix>/*`) and nothing else: no listing, no deleting,
  no other prefix, no bucket settings. A `user` account owns no bucket, so the policy is all it has;
- DIR/s3/<service>.env (directory 0700, files 0600): `AWS_ACCESS_KEY_ID=…` and
  `AWS_SECRET_ACCESS_KEY=…`, which services.sh exports into the service's environment.

The operator keeps the root key (tests, the CLI, the demo): it bypasses the policy. Exit status 1
means "not yet or refused", the reason on stderr (never a secret).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import ssl
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape

from mlops.private_files import write_private

READ = ("s3:GetObject",)
"""GetObject also answers HeadObject; a missing key is still NoSuchKey (404), not AccessDenied."""
WRITE = ("s3:PutObject", "s3:AbortMultipartUpload")
"""PutObject covers multipart uploads too; aborting one is an action of its own."""

ACCOUNTS: dict[str, dict[str, tuple[str, ...]]] = {
    # checks each committed data set before recording it (services/registry/datasets.py); stores the
    # models registered from outside and their profiles, and runs' files, and serves them back
    # (services/registry/core/external.py, artifacts.py)
    "registry": {"datasets": READ, "models": READ + WRITE, "runs": READ + WRITE},
    # trains on a data set version; writes the model and its profile (services/trainer/runs.py)
    "trainer": {"datasets": READ, "models": WRITE},
    # scores the challenger and the champion on the held-out split (services/evaluator/core.py)
    "evaluator": {"datasets": READ, "models": READ},
    # loads the ONNX models it serves (services/inference/app.py)
    "inference": {"models": READ},
    # reads training profiles (beside their models) and the parent data set, writes the data set
    # it assembles from drifted windows (services/monitor/clients.py, core.py)
    "monitor": {"datasets": READ + WRITE, "models": READ},
    # no artifact at all: an account of its own all the same, so that it does not fall back to the
    # operator's root key in <stack>/env
    "deployer": {},
    # reads through the services' APIs, never the store: likewise an account with no rights
    "console": {},
}
"""Each service's account: the prefixes of the content-addressed layout (`<prefix>/<name>/<sha256>/<file>`)
it may touch, and how."""


class Refused(Exception):
    """The server refused or could not be reached; the message is safe to print."""


def account_secrets(pki: Path) -> dict[str, str]:
    """Each account's secret key from DIR/s3-users.json; missing ones are made and saved."""
    path = pki / "s3-users.json"
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        values = {}
    except json.JSONDecodeError as error:
        raise SystemExit(f"{path} is not JSON ({error}): repair or delete it (new secrets)") from None
    if not isinstance(values, dict) or not all(isinstance(v, str) and v for v in values.values()):
        raise SystemExit(f"{path} must map each service to a non-empty secret key")
    missing = [name for name in ACCOUNTS if name not in values]
    if missing:
        # token_urlsafe: nothing a shell line (the .env files are sourced) would need to escape
        values |= {name: secrets.token_urlsafe(30) for name in missing}
        pki.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, json.dumps(values, indent=2, sort_keys=True) + "\n")
    path.chmod(0o600)
    return {name: values[name] for name in ACCOUNTS}


def bucket_policy(bucket: str) -> dict:
    statements = [
        {
            "Sid": f"{service}-{prefix}".replace("-", " ").title().replace(" ", ""),
            "Effect": "Allow",
            "Principal": {"AWS": [service]},
            "Action": list(actions),
            "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/*"],
        }
        for service, grants in ACCOUNTS.items()
        for prefix, actions in grants.items()
    ]
    return {"Version": "2012-10-17", "Statement": statements}


class Admin:
    """versitygw's admin API (PATCH /create-user, /update-user, /delete-user, /list-users on the S3
    port), signed with SigV4 as the root account; the request body carries a new account's secret,
    which therefore never appears on a command line (`versitygw admin create-user --secret` would)."""

    def __init__(self, endpoint: str, region: str, access: str, secret: str, ca: Path | None = None) -> None:
        from botocore.credentials import Credentials

        self.endpoint = endpoint.rstrip("/")
        self.region = region
        self.credentials = Credentials(access, secret)
        # None: the system's CAs (urllib's default), which verify too
        self.tls = ssl.create_default_context(cafile=str(ca)) if ca else None

    def call(self, path: str, body: bytes = b"") -> bytes:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(
            method="PATCH",
            url=self.endpoint + path,
            data=body,
            headers={"x-amz-content-sha256": hashlib.sha256(body).hexdigest()},
        )
        SigV4Auth(self.credentials, "s3", self.region).add_auth(request)
        sent = urllib.request.Request(
            request.url, data=body or None, method="PATCH", headers=dict(request.headers.items())
        )
        action = path.split("?")[0].strip("/")
        try:
            with urllib.request.urlopen(sent, timeout=10, context=self.tls) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            raise Refused(f"admin {action}: HTTP {error.code} {_error_code(error.read())}") from None
        except OSError as error:
            raise Refused(f"admin {action}: {type(error).__name__}: {error}") from None

    def users(self) -> dict[str, tuple[str, str]]:
        """access key → (secret, role) of every IAM account."""
        root = ET.fromstring(self.call("/list-users"))
        return {
            entry.findtext("Access", ""): (entry.findtext("Secret", ""), entry.findtext("Role", ""))
            for entry in root.iter("Accounts")
        }

    def create(self, access: str, secret: str, role: str) -> None:
        body = (
            f"<Account><Access>{escape(access)}</Access><Secret>{escape(secret)}</Secret>"
            f"<Role>{escape(role)}</Role></Account>"
        )
        self.call("/create-user", body.encode())

    def update(self, access: str, secret: str, role: str) -> None:
        body = f"<Account><Secret>{escape(secret)}</Secret><Role>{escape(role)}</Role></Account>"
        self.call(f"/update-user?access={quote(access, safe='')}", body.encode())

    def delete(self, access: str) -> None:
        self.call(f"/delete-user?access={quote(access, safe='')}")


def _error_code(body: bytes) -> str:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return ""
    return " ".join(filter(None, (root.findtext("Code"), root.findtext("Message"))))


def apply_accounts(admin: Admin, wanted: dict[str, str]) -> list[str]:
    """The server's IAM accounts made equal to `wanted` (access key → secret), all of role `user`."""
    done = []
    have = admin.users()
    for access, secret in wanted.items():
        if access not in have:
            admin.create(access, secret, "user")
            done.append(f"account {access} created")
        elif have[access] != (secret, "user"):
            admin.update(access, secret, "user")
            done.append(f"account {access} updated")
    for access in sorted(set(have) - set(wanted)):
        admin.delete(access)
        done.append(f"account {access} deleted (not in the table)")
    return done


def apply_policy(
    endpoint: str, region: str, bucket: str, access: str, secret: str, ca: Path | None = None
) -> list[str]:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        verify=str(ca) if ca else None,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )
    wanted = bucket_policy(bucket)
    try:
        try:
            current = json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "NoSuchBucketPolicy":
                raise
            current = None
        if current == wanted:
            return []
        client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(wanted))
    except (BotoCoreError, ClientError) as error:
        raise Refused(f"bucket policy of {bucket}: {type(error).__name__}: {error}") from None
    return [f"bucket policy of {bucket} set ({len(wanted['Statement'])} statements)"]


def write_env_files(pki: Path, wanted: dict[str, str]) -> list[Path]:
    folder = pki / "s3"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    written = []
    for service, secret in wanted.items():
        path = folder / f"{service}.env"
        text = f"AWS_ACCESS_KEY_ID={service}\nAWS_SECRET_ACCESS_KEY={secret}\n"
        if not path.exists() or path.read_text() != text:
            write_private(path, text)
        path.chmod(0o600)
        written.append(path)
    for stale in folder.glob("*.env"):
        if stale not in written:
            stale.unlink()
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("apply",))
    parser.add_argument("--pki", type=Path, required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--ca", type=Path, help="the CA that signed the server's certificate")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args(argv)
    root_access = os.environ.get("ROOT_ACCESS_KEY_ID", "")
    root_secret = os.environ.get("ROOT_SECRET_ACCESS_KEY", "")
    if not root_access or not root_secret:
        raise SystemExit("ROOT_ACCESS_KEY_ID and ROOT_SECRET_ACCESS_KEY (the root account) are not set")
    if root_access in ACCOUNTS:
        raise SystemExit(f"the root access key cannot be named after a service ({root_access})")
    wanted = account_secrets(args.pki)
    admin = Admin(args.endpoint, args.region, root_access, root_secret, args.ca)
    try:
        done = apply_accounts(admin, wanted)
        done += apply_policy(args.endpoint, args.region, args.bucket, root_access, root_secret, args.ca)
    except Refused as error:
        print(f"s3_accounts: {error}", file=sys.stderr)
        return 1
    write_env_files(args.pki, wanted)
    for line in done:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
