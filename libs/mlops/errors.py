"""One error hierarchy for the whole platform.

Each error knows its gRPC status and HTTP status, so that the gRPC interceptor maps it in one
place and a client can re-raise the same typed error from the status it receives.
"""

from __future__ import annotations

import grpc


class MlopsError(Exception):
    """Base of every error the platform raises on purpose. The message is meant for a person."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MlopsError):
    """The caller sent something malformed; retrying the same input cannot help."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFound(MlopsError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class AlreadyExists(MlopsError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class FailedPrecondition(MlopsError):
    """The request is well formed but the system is not in a state to honour it."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 412


class PermissionDenied(MlopsError):
    """The caller, or this service towards a dependency, lacks the rights or credentials; retrying cannot help."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class Conflict(MlopsError):
    """A concurrent change won; the caller may retry after re-reading."""

    grpc_code = grpc.StatusCode.ABORTED
    http_status = 409
    retryable = True


class ResourceExhausted(MlopsError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    retryable = True


class Unavailable(MlopsError):
    """A dependency (database, broker, peer service) cannot be reached right now."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    retryable = True


class DeadlineExceeded(MlopsError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504
    retryable = True


class IntegrityError(MlopsError):
    """Stored bytes do not match the checksum recorded for them: never use them."""

    grpc_code = grpc.StatusCode.DATA_LOSS
    http_status = 500


class Internal(MlopsError):
    grpc_code = grpc.StatusCode.INTERNAL
    http_status = 500


_BY_CODE: dict[grpc.StatusCode, type[MlopsError]] = {
    cls.grpc_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        PermissionDenied,
        Conflict,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        IntegrityError,
        Internal,
    )
}


def error_for_status(code: grpc.StatusCode, message: str) -> MlopsError:
    """The typed error a client raises for a status received over the wire."""
    return _BY_CODE.get(code, MlopsError)(message)
