"""Name → class map of artifact stores, chosen by the scheme of `MLOPS_ARTIFACT_ROOT`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from mlops.errors import InvalidArgument
from mlops.settings import ArtifactSettings
from mlops.store.base import ArtifactStore
from mlops.store.local import FileStore, FileStoreConfig
from mlops.store.s3 import S3Store, S3StoreConfig

STORES: dict[str, type[ArtifactStore]] = {"file": FileStore, "s3": S3Store}


def open_store(settings: ArtifactSettings) -> ArtifactStore:
    """The store that `settings.root` names: `file:///abs/dir` or `s3://bucket[/prefix]`."""
    parsed = urlparse(settings.root)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidArgument(f"MLOPS_ARTIFACT_ROOT {settings.root!r}: file:// URIs take no host")
        return FileStore(FileStoreConfig(root=Path(unquote(parsed.path))))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InvalidArgument(
                f"MLOPS_ARTIFACT_ROOT {settings.root!r} names no bucket (s3://bucket/prefix)"
            )
        return S3Store(
            S3StoreConfig(
                bucket=parsed.netloc,
                prefix=parsed.path.strip("/"),
                endpoint_url=settings.s3_endpoint_url,
                ca_file=settings.s3_ca_file,
                region=settings.s3_region,
                addressing_style=settings.s3_addressing_style,
                multipart_threshold_mb=settings.multipart_threshold_mb,
            )
        )
    raise InvalidArgument(
        f"MLOPS_ARTIFACT_ROOT {settings.root!r} has scheme {parsed.scheme!r}; supported: {', '.join(STORES)}"
    )
