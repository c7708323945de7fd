"""gRPC plumbing shared by every service: an aio server with health, reflection, tracing and error mapping."""

from mlops.grpc.client import open_channel, open_sync_channel, raise_typed
from mlops.grpc.errors import ErrorInterceptor
from mlops.grpc.server import GrpcServer

__all__ = ["ErrorInterceptor", "GrpcServer", "open_channel", "open_sync_channel", "raise_typed"]
