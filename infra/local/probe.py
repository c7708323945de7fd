"""Readiness probes for the local stack (used by stack.sh; standard library only, except S3).

    probe.py kafka HOST:PORT          the broker answers a Metadata request and lists itself
    probe.py s3 ENDPOINT [BUCKET]     a signed ListBuckets succeeds; BUCKET is created if missing
                                      (boto3; keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)

Exit status 0 when ready, 1 when not (the reason on stderr), 2 on usage errors, 3 when the
S3 probe has no boto3 (stack.sh then signs its requests with curl).
"""

from __future__ import annotations

import socket
import struct
import sys


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        buf += chunk
    return buf


def kafka_ready(address: str, timeout: float = 3.0) -> str:
    """Send a Metadata v4 request (all topics) and check that the broker lists itself."""
    host, _, port_s = address.rpartition(":")
    port = int(port_s)
    client_id = b"mlops-stack-probe"
    correlation_id = 7
    # request header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id
    header = struct.pack(">hhih", 3, 4, correlation_id, len(client_id)) + client_id
    # body v4: topics = null (all topics), allow_auto_topic_creation = false
    body = struct.pack(">ib", -1, 0)
    request = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _read_exact(sock, 4))
        data = _read_exact(sock, size)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values

    def take_string() -> str | None:
        nonlocal pos
        (length,) = take(">h")
        if length < 0:
            return None
        value = data[pos : pos + length].decode()
        pos += length
        return value

    (got_correlation,) = take(">i")
    if got_correlation != correlation_id:
        raise ValueError(f"unexpected correlation id {got_correlation}")
    take(">i")  # throttle_time_ms
    (n_brokers,) = take(">i")
    brokers = []
    for _ in range(max(n_brokers, 0)):
        (node_id,) = take(">i")
        broker_host = take_string()
        (broker_port,) = take(">i")
        take_string()  # rack
        brokers.append((node_id, broker_host, broker_port))
    cluster_id = take_string()
    (controller_id,) = take(">i")
    if not brokers:
        raise RuntimeError("broker answered but lists no live broker yet")
    if not any(b[2] == port for b in brokers):
        raise RuntimeError(f"broker lists {brokers}, none on port {port}")
    return f"cluster {cluster_id}, brokers {brokers}, controller {controller_id}"


def s3_ready(endpoint: str, bucket: str | None) -> str:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
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
    if len(argv) < 2 or argv[0] not in ("kafka", "s3"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "s3":
        try:
            import boto3  # noqa: F401
        except ImportError:
            print("boto3 is not installed for this interpreter", file=sys.stderr)
            return 3
    try:
        if argv[0] == "kafka":
            print(kafka_ready(argv[1]))
        else:
            print(s3_ready(argv[1], argv[2] if len(argv) > 2 else None))
    except Exception as exc:
        print(f"not ready: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
