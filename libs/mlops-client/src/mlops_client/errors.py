"""The client's errors: one class per gRPC status the registry answers with, carrying its message.

The registry says what is wrong in words a user can act on ("model 'wine' has no version 7"); the
client keeps that message and the status, so code can catch `NotFound` without parsing text.
"""

from __future__ import annotations

import grpc


class MlopsError(Exception):
    """Any error of the client; `code` is the gRPC status, `message` the server's (or the client's) words."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MlopsError, ValueError):
    """The request is malformed: a bad name, a file that is not ONNX, a step below 1."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(MlopsError, LookupError):
    """No such model, version, alias, run or artifact."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MlopsError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(MlopsError):
    """The state does not allow the change, e.g. logging to a run that has finished."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(MlopsError):
    """The caller's identity may not make this call (e.g. registering a model needs an admin)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(PermissionDenied):
    """No credentials, or credentials the registry does not accept."""

    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(MlopsError, ConnectionError):
    """The registry cannot be reached, after the client's retries."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(Unavailable, TimeoutError):
    """The registry did not answer in time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class DataLoss(MlopsError):
    """Bytes that arrived do not match their digest."""

    code = grpc.StatusCode.DATA_LOSS


class Internal(MlopsError):
    """The server failed; its logs say more."""

    code = grpc.StatusCode.INTERNAL


class MissingExtra(MlopsError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


_BY_CODE: dict[grpc.StatusCode, type[MlopsError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        Unavailable,
        DeadlineExceeded,
        DataLoss,
        Internal,
    )
}


def from_rpc_error(error: grpc.RpcError) -> MlopsError:
    """The typed error for a failed call, with the server's message."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else None
    cls = _BY_CODE.get(code, MlopsError)
    result = cls(details or f"the registry answered {code.name if code else 'UNKNOWN'}")
    if cls is MlopsError:
        result.code = code
    return result
