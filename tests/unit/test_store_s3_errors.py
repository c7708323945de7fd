"""S3 failures told apart by code and status: missing, outage (wait), or refused for good (dead-letter)."""

from __future__ import annotations

import grpc
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from mlops.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable
from mlops.outages import is_outage
from mlops.store.s3_errors import s3_failure, store_error

URI = "s3://mlops/datasets/wine/" + "a" * 64 + "/data.csv"


def client_error(code: str, status: int | None, operation: str = "GetObject") -> ClientError:
    response: dict = {"Error": {"Code": code, "Message": f"the server says {code}"}}
    if status is not None:
        response["ResponseMetadata"] = {"HTTPStatusCode": status}
    return ClientError(response, operation)


@pytest.mark.parametrize(
    ("code", "status", "failure", "platform"),
    [
        ("NoSuchKey", 404, "missing", NotFound),
        ("404", 404, "missing", NotFound),  # HeadObject: no body, the status stands in for the code
        ("SlowDown", 503, "outage", Unavailable),
        ("InternalError", 500, "outage", Unavailable),
        ("ServiceUnavailable", 503, "outage", Unavailable),
        ("RequestTimeout", 400, "outage", Unavailable),
        ("Throttling", 400, "outage", Unavailable),
        ("TooManyRequests", 429, "outage", Unavailable),
        ("SomethingNew", 502, "outage", Unavailable),
        ("AccessDenied", 403, "denied", PermissionDenied),
        ("InvalidAccessKeyId", 403, "denied", PermissionDenied),
        ("SignatureDoesNotMatch", 403, "denied", PermissionDenied),
        ("403", 403, "denied", PermissionDenied),
        ("NoSuchBucket", 404, "rejected", FailedPrecondition),
        ("InvalidBucketName", 400, "rejected", FailedPrecondition),
        ("KeyTooLongError", 400, "rejected", FailedPrecondition),
        ("InvalidArgument", 400, "rejected", FailedPrecondition),
        ("MethodNotAllowed", 405, "rejected", FailedPrecondition),
        ("PreconditionFailed", 412, "rejected", FailedPrecondition),
    ],
)
def test_client_errors_are_classified_by_code_and_status(code, status, failure, platform):
    error = client_error(code, status)
    assert s3_failure(error) == failure
    mapped = store_error(error, "read", URI)
    assert type(mapped) is platform
    assert URI in mapped.message
    # The raw error and the platform error it becomes agree on whether to wait.
    assert is_outage(error) is (failure == "outage")
    try:
        raise mapped from error
    except type(mapped) as raised:
        assert is_outage(raised) is (failure == "outage")


def test_a_permanent_refusal_names_the_code_and_what_to_check():
    denied = store_error(client_error("SignatureDoesNotMatch", 403), "read", URI)
    assert denied.grpc_code == grpc.StatusCode.PERMISSION_DENIED and not denied.retryable
    assert "SignatureDoesNotMatch (HTTP 403)" in denied.message and "AWS_SECRET_ACCESS_KEY" in denied.message
    missing_bucket = store_error(client_error("NoSuchBucket", 404), "read", URI)
    assert missing_bucket.grpc_code == grpc.StatusCode.FAILED_PRECONDITION and not missing_bucket.retryable
    assert (
        "NoSuchBucket (HTTP 404)" in missing_bucket.message
        and "MLOPS_ARTIFACT_ROOT" in missing_bucket.message
    )


@pytest.mark.parametrize(
    "error",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9000"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:9000"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:9000"),
        ResponseStreamingError(error="connection reset"),
    ],
)
def test_lost_connections_are_outages(error):
    assert s3_failure(error) == "outage"
    assert is_outage(error)
    assert type(store_error(error, "read", URI)) is Unavailable


def test_missing_credentials_and_invalid_parameters_are_permanent():
    assert type(store_error(NoCredentialsError(), "read", URI)) is PermissionDenied
    assert not is_outage(NoCredentialsError())
    invalid = ParamValidationError(report="Invalid bucket name 'no/such'")
    assert type(store_error(invalid, "read", URI)) is FailedPrecondition
    assert not is_outage(invalid)


def test_a_client_re_raises_permission_denied_from_its_status():
    from mlops.errors import error_for_status

    assert type(error_for_status(grpc.StatusCode.PERMISSION_DENIED, "no")) is PermissionDenied
