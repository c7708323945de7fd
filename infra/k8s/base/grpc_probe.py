"""The services' Kubernetes probe: gRPC health over TLS, as the pod's own service identity.

    python /etc/mlops/probe/grpc_probe.py PORT SERVER_NAME [--fresh STAGGER_S] [--tls-dir DIR]

Exits 0 when the server on 127.0.0.1:PORT answers SERVING to grpc.health.v1.Health/Check over TLS,
its certificate verified against DIR/ca.crt under SERVER_NAME (a name in its certificate), while
the probe presents DIR/tls.crt: the main port of every service but inference asks for a client
certificate (mutual TLS). Health is open to any caller, so the handshake is all it needs; no token.

Why not Kubernetes' own `grpc:` probe: it speaks plaintext only, and every gRPC port is TLS.

`--fresh` (the liveness probe) also fails once the server still presents a certificate other than
the mounted one STAGGER_S seconds after the mount changed (cert-manager renewed it): the server reads
its certificate at start, so a restart is what puts the new one in use, before the old one expires.
Each pod waits its own share of STAGGER_S (from its name), so the replicas do not restart together.

Exit 1 with one line on stderr (kubelet shows it in the pod's events) for anything else.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import ssl
import sys
import time
from pathlib import Path

# before grpc starts: its own log lines would bury the one line the kubelet shows (that line has the cause)
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TLS_DIR = Path("/etc/mlops/grpc-tls")
TIMEOUT_S = 3.0


def health(port: int, server_name: str, tls_dir: Path) -> str | None:
    """None when SERVING, else why not."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "ca.crt").read_bytes(),
        private_key=(tls_dir / "tls.key").read_bytes(),
        certificate_chain=(tls_dir / "tls.crt").read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", server_name)]
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
            )
        except grpc.RpcError as error:
            return f"health check on port {port}: {error.code().name}: {error.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"port {port} answers {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def stale(port: int, server_name: str, tls_dir: Path, stagger_s: float) -> str | None:
    """Why the server must restart to take up the renewed certificate, or None."""
    mounted_pem = (tls_dir / "tls.crt").read_text()
    end = mounted_pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    mounted = ssl.PEM_cert_to_DER_cert(mounted_pem[:end])
    context = ssl.create_default_context(cafile=str(tls_dir / "ca.crt"))
    context.load_cert_chain(str(tls_dir / "tls.crt"), str(tls_dir / "tls.key"))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        served = tls.getpeercert(binary_form=True)
    if served == mounted:
        return None
    renewed_s = time.time() - (tls_dir / "tls.crt").stat().st_mtime
    share = int.from_bytes(hashlib.sha256(socket.gethostname().encode()).digest()[:4], "big") / 2**32
    if renewed_s < share * stagger_s:
        return None
    return f"port {port} still serves the certificate it started with; {tls_dir / 'tls.crt'} was renewed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("server_name", help="a DNS name in the server's certificate (its Service's name)")
    parser.add_argument("--fresh", type=float, metavar="STAGGER_S", help="also fail on a renewed certificate")
    parser.add_argument("--tls-dir", type=Path, default=TLS_DIR)
    args = parser.parse_args(argv)
    try:
        why = health(args.port, args.server_name, args.tls_dir)
        if why is None and args.fresh is not None:
            why = stale(args.port, args.server_name, args.tls_dir, args.fresh)
    except (OSError, ValueError) as error:
        why = f"port {args.port}: {error}"
    if why is not None:
        print(why, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
