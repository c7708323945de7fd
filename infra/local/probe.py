"""Readiness probes for the local stack (used by stack.sh; Kafka's is kafka_secure.py ping, as admin).

    probe.py s3 ENDPOINT [--ca FILE] [BUCKET]
                                      a signed ListBuckets succeeds; BUCKET is created if missing
                                      (boto3; keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY;
                                      an https ENDPOINT's certificate verified against FILE)

Exit status 0 when ready, 1 when not (the reason on stderr), 2 on usage errors, 3 when the
S3 probe has no boto3 (stack.sh then signs its requests with curl).
"""

from __future__ import annotations

import sys


def s3_ready(endpoint: str, bucket: str | None, ca: str | None = None) -> str:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        verify=ca,
        config=Config(
            connect_timeout=2,
            read_timeout=5,
            retries={"max_attempts": 1},
            s3={"addressing_style": "path"},
        ),
    )
    names = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
    if bucket and bucket not in names:
        try:
            client.create_bucket(Bucket=bucket)
        except ClientError as exc:  # created by a concurrent caller: fine
            if exc.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
        client.head_bucket(Bucket=bucket)
        return f"created bucket {bucket}"
    return f"buckets {names}"


def main(argv: list[str]) -> int:
    ca = None
    if "--ca" in argv[2:-1]:
        at = argv.index("--ca", 2)
        ca, argv = argv[at + 1], argv[:at] + argv[at + 2 :]
    if len(argv) not in (2, 3) or argv[0] != "s3":
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import boto3  # noqa: F401
    except ImportError:
        print("boto3 is not installed for this interpreter", file=sys.stderr)
        return 3
    try:
        print(s3_ready(argv[1], argv[2] if len(argv) > 2 else None, ca))
    except Exception as exc:
        print(f"not ready: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
