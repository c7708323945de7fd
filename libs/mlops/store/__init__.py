"""Content-addressed artifact store: `file://` (embedded default) and `s3://` (any S3-compatible server).

Every object lives at `<namespace>/<sha256>/<filename>`; every read verifies the bytes against the
sha256 and refuses a mismatch with `IntegrityError`.
"""

from mlops.store.base import ArtifactRef, ArtifactStore, sha256_of_file, split_content_address
from mlops.store.factory import STORES, open_store
from mlops.store.local import FileStore, FileStoreConfig
from mlops.store.s3 import S3Store, S3StoreConfig

__all__ = [
    "STORES",
    "ArtifactRef",
    "ArtifactStore",
    "FileStore",
    "FileStoreConfig",
    "S3Store",
    "S3StoreConfig",
    "open_store",
    "sha256_of_file",
    "split_content_address",
]
