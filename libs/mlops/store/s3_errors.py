"""What a failed S3 call means: the object is missing, S3 is out for a while, or it refused for good.

Only an outage is worth waiting for. A refusal (wrong credentials, no such bucket, a key S3 will not
take, any other 4xx) fails the same way on every retry, so it must not hold the events behind it:
it becomes `PermissionDenied` or `FailedPrecondition`, which consumers dead-letter and the gRPC layer
answers as PERMISSION_DENIED or FAILED_PRECONDITION. `mlops.outages.is_outage` reads raw botocore
errors through `s3_failure` too, so both agree.
"""

from __future__ import annotations

from typing import Literal

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from mlops.errors import FailedPrecondition, MlopsError, NotFound, PermissionDenied, Unavailable

Failure = Literal["missing", "outage", "denied", "rejected"]

_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchVersion"}
# Codes S3 and its look-alikes send while overloaded or mid-restart: some come with a 4xx status
# (RequestTimeout is a 400, throttling often a 429 or 400), so the status alone cannot tell.
_OUTAGE = {
    "SlowDown",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "ServiceUnavailable",
    "InternalError",
    "OperationAborted",
}
_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "AccountProblem",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
    "NotSignedUp",
    "Forbidden",
    "Unauthorized",
}


def _code_and_status(error: ClientError) -> tuple[str, int | None]:
    response = error.response or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status is None and code.isdigit():
        status = int(code)  # HEAD answers carry no body: botocore puts the bare status in Code
    return code, status


def s3_failure(error: BaseException) -> Failure:
    """What a botocore error says about the call: missing object, outage, denied or rejected."""
    if isinstance(error, ClientError):
        code, status = _code_and_status(error)
        if code in _MISSING:
            return "missing"
        if code in _OUTAGE or (status is not None and (status >= 500 or status == 429)):
            return "outage"
        if code in _DENIED or status in (401, 403):
            return "denied"
        return "rejected"
    if isinstance(error, BotoConnectionError | HTTPClientError | IncompleteReadError):
        return "outage"  # refused or dropped connections, timeouts, a body cut short
    if isinstance(error, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return "denied"
    return "rejected"


def store_error(error: BotoCoreError | ClientError, action: str, uri: str) -> MlopsError:
    """The platform error for a failed S3 call; `action` names it ("read", "head", "upload")."""
    failure = s3_failure(error)
    if isinstance(error, ClientError):
        code, status = _code_and_status(error)
        message = error.response.get("Error", {}).get("Message") or "no message"
        detail = f"{code or 'error'} (HTTP {status}): {message}"
    else:
        detail = f"{type(error).__name__}: {error}"
    if failure == "missing":
        return NotFound(f"artifact {uri} does not exist")
    if failure == "outage":
        return Unavailable(f"S3 {action} of {uri} failed for now, {detail}; it is worth retrying")
    if failure == "denied":
        return PermissionDenied(
            f"S3 refused the {action} of {uri}: {detail}; check the store's credentials "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and what they may access"
        )
    return FailedPrecondition(
        f"S3 refused the {action} of {uri}: {detail}; retrying cannot help: check the bucket and key "
        "(MLOPS_ARTIFACT_ROOT) and the request"
    )
