"""`s3://` backend on boto3, for AWS or any S3-compatible server (versitygw, Ceph, …)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.awsrequest import AWSHTTPSConnection
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict

from mlops.errors import InvalidArgument
from mlops.store.base import (
    CHUNK,
    ArtifactRef,
    ArtifactStore,
    Progress,
    content_key,
    download_verified,
    expected_sha256,
    sha256_of_file,
    verify,
)
from mlops.store.s3_errors import s3_failure, store_error


class S3StoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["s3"] = "s3"
    bucket: str
    prefix: str = ""
    """Key prefix inside the bucket, so that several platforms can share one bucket."""
    endpoint_url: str | None = None
    ca_file: Path | None = None
    """The CA that signed the endpoint's certificate; unset, the system's trusted CAs."""
    region: str = "us-east-1"
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    multipart_threshold_mb: int = 64


tracer = trace.get_tracer("mlops.store")


def _read_the_answer_when_a_tls_peer_stops_reading() -> None:
    """Let botocore read a server's answer that came before the whole body was sent, over TLS as over TCP.

    A server may answer a PUT before reading its body (versitygw's 403 for a key the policy refuses)
    and close the connection. urllib3 then swallows the write's BrokenPipeError and reads the answer;
    but CPython 3.10 to 3.12 report that write failure on a TLS socket as SSLEOFError
    (python/cpython#115627, urllib3/urllib3#2733), so the refusal surfaced as a dropped connection,
    an outage to wait out, instead of AccessDenied. Raised as the BrokenPipeError it is, the answer
    is read; where there is none, reading it fails as a closed connection, as before.
    """
    send = AWSHTTPSConnection.send
    if getattr(send, "reads_answer_after_tls_eof", False):
        return

    def send_or_broken_pipe(self, data):
        try:
            return send(self, data)
        except ssl.SSLEOFError as error:
            raise BrokenPipeError(errno.EPIPE, f"TLS peer closed the connection: {error}") from error

    send_or_broken_pipe.reads_answer_after_tls_eof = True
    AWSHTTPSConnection.send = send_or_broken_pipe


_read_the_answer_when_a_tls_peer_stops_reading()


@contextmanager
def _classified(action: str, uri: str) -> Iterator[None]:
    """Raise a failed call as the platform error that says whether to wait or give up."""
    try:
        yield
    except (BotoCoreError, ClientError) as error:
        raise store_error(error, action, uri) from error
    except S3UploadFailedError as error:
        # s3transfer rewraps the botocore error of a failed part; what it says lies underneath.
        cause = error.__cause__ or error.__context__
        if isinstance(cause, BotoCoreError | ClientError):
            raise store_error(cause, action, uri) from error
        raise


class S3Store(ArtifactStore):
    scheme = "s3"

    def __init__(self, config: S3StoreConfig) -> None:
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix.strip("/")
        # A session of its own reads the credentials (AWS_* variables, profile) as the store opens;
        # the process-wide default session would keep whatever it found first.
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            verify=str(config.ca_file) if config.ca_file else None,
            config=Config(
                s3={"addressing_style": config.addressing_style},
                retries={"max_attempts": 5, "mode": "standard"},
                max_pool_connections=32,
            ),
        )
        threshold = config.multipart_threshold_mb * 1024 * 1024
        self.transfer = TransferConfig(
            multipart_threshold=threshold, multipart_chunksize=min(threshold, 64 << 20)
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _locate(self, uri: str) -> tuple[str, str]:
        """(object key, content address relative to the prefix) of a URI in this store."""
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or parsed.netloc != self.bucket:
            raise InvalidArgument(f"{uri!r} is not in this store (s3://{self.bucket})")
        key = parsed.path.lstrip("/")
        relative = key[len(self.prefix) + 1 :] if self.prefix and key.startswith(self.prefix + "/") else key
        return key, relative

    async def _exists_key(self, key: str) -> bool:
        try:
            await asyncio.to_thread(self.client.head_object, Bucket=self.bucket, Key=key)
            return True
        except (BotoCoreError, ClientError) as error:
            if s3_failure(error) == "missing":
                return False
            raise store_error(error, "head", f"s3://{self.bucket}/{key}") from error

    async def put_bytes(self, namespace: str, filename: str, data: bytes) -> ArtifactRef:
        sha = hashlib.sha256(data).hexdigest()
        key = self._key(content_key(namespace, sha, filename))
        # The key is the content: writing the same bytes again is harmless, and one request is
        # cheaper than asking first.
        uri = f"s3://{self.bucket}/{key}"

        def put() -> None:
            with _classified("upload", uri):
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata={"sha256": sha})

        await asyncio.to_thread(put)
        return ArtifactRef(uri=uri, sha256=sha, size=len(data))

    async def put_file(
        self, namespace: str, filename: str, path: Path, progress: Progress | None = None
    ) -> ArtifactRef:
        sha, size = await asyncio.to_thread(sha256_of_file, path, None)
        key = self._key(content_key(namespace, sha, filename))
        uri = f"s3://{self.bucket}/{key}"
        small = size < self.transfer.multipart_threshold
        # A large file already stored is not sent again; a small one is cheaper to write than to look up.
        if small or not await self._exists_key(key):
            if small:
                # One PutObject in a thread that carries the caller's context: its span joins the trace.
                def put() -> None:
                    with path.open("rb") as body, _classified("upload", uri):
                        self.client.put_object(
                            Bucket=self.bucket, Key=key, Body=body, Metadata={"sha256": sha}
                        )

                await asyncio.to_thread(put)
                if progress:
                    progress(size)
            else:
                # s3transfer uploads the parts from threads of its own, which lose the trace context:
                # one span here stands for the whole multipart upload.
                with tracer.start_as_current_span(
                    "S3 multipart upload", attributes={"aws.s3.key": key, "aws.s3.bucket": self.bucket}
                ):

                    def upload() -> None:
                        with _classified("multipart upload", uri):
                            self.client.upload_file(
                                str(path),
                                self.bucket,
                                key,
                                ExtraArgs={"Metadata": {"sha256": sha}},
                                Config=self.transfer,
                                Callback=progress,
                            )

                    await asyncio.to_thread(upload)
        elif progress:
            progress(size)
        return ArtifactRef(uri=uri, sha256=sha, size=size)

    async def get_bytes(self, uri: str, sha256: str | None = None) -> bytes:
        key, relative = self._locate(uri)
        expected = expected_sha256(relative, sha256)

        def read() -> bytes:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except (BotoCoreError, ClientError) as error:
                raise store_error(error, "read", uri) from error

        data = await asyncio.to_thread(read)
        verify(uri, expected, hashlib.sha256(data).hexdigest())
        return data

    async def get_file(self, uri: str, dest: Path, sha256: str | None = None) -> Path:
        _, relative = self._locate(uri)
        expected = expected_sha256(relative, sha256)

        def fetch(handle) -> None:
            # One streamed GetObject in a thread that carries the caller's trace context.
            with self.open_stream(uri) as chunks:
                for chunk in chunks:
                    handle.write(chunk)

        await asyncio.to_thread(download_verified, uri, dest, expected, fetch)
        return dest

    @contextmanager
    def open_stream(self, uri: str) -> Iterator[Iterator[bytes]]:
        key, _ = self._locate(uri)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except (BotoCoreError, ClientError) as error:
            raise store_error(error, "read", uri) from error
        try:
            yield self._chunks(body, uri)
        finally:
            body.close()

    @staticmethod
    def _chunks(body, uri: str) -> Iterator[bytes]:
        # A connection dropped mid-body surfaces here, long after get_object returned.
        try:
            yield from body.iter_chunks(CHUNK)
        except (BotoCoreError, ClientError) as error:
            raise store_error(error, "read", uri) from error

    async def exists(self, uri: str) -> bool:
        key, _ = self._locate(uri)
        return await self._exists_key(key)
