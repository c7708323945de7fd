"""Files in the artifact store, through the registry: a run's files uploaded under it, and any model
version's or run's file downloaded in chunks, checked against the sha256 recorded for it."""

from __future__ import annotations

import posixpath
import re
from collections.abc import AsyncIterable, AsyncIterator

from mlops.errors import NotFound
from mlops.registry.v1 import registry_pb2 as pb
from mlops.store import ArtifactStore
from services.registry.common import need, now, timestamp
from services.registry.core.runs import Runs
from services.registry.core.transfer import checked_digest, chunks_of, receive
from services.registry.core.versions import ModelVersions
from services.registry.settings import RegistrySettings

SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


def check_path(path: str) -> tuple[str, str]:
    """(folder, file name) of a run artifact's relative path, e.g. ("plots", "loss.png")."""
    parts = path.split("/")
    need(
        bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts),
        f"artifact path {path!r} must be relative, without '..', '.' or empty parts, e.g. 'plots/loss.png'",
    )
    bad = next((p for p in parts if not SEGMENT.match(p)), None)
    need(bad is None, f"artifact path {path!r}: {bad!r} may hold only letters, digits, '.', '_' and '-'")
    return posixpath.dirname(path), parts[-1]


class Artifacts:
    def __init__(
        self,
        store: ArtifactStore | None,
        settings: RegistrySettings,
        *,
        runs: Runs,
        versions: ModelVersions,
    ) -> None:
        self._store = store
        self.settings = settings
        self.runs = runs
        self.versions = versions

    @property
    def store(self) -> ArtifactStore:
        assert self._store is not None, "the registry was built without an artifact store"
        return self._store

    async def upload_run_artifact(self, parts: AsyncIterable[pb.UploadRunArtifactRequest]) -> pb.RunArtifact:
        header, data = await receive(parts, what="UploadRunArtifact", limit=self.settings.max_artifact_bytes)
        folder, name = check_path(header.path)
        need(
            bool(SEGMENT.match(header.run_id)),
            f"run_id {header.run_id!r} is invalid: letters, digits, '.', '_' and '-'",
        )
        digest = checked_digest(data, size=header.size_bytes, sha256=header.sha256, name=header.path)
        await self.runs.get_run(pb.GetRunRequest(run_id=header.run_id))  # NotFound before any byte is stored
        namespace = "/".join(p for p in ("runs", header.run_id, folder) if p)
        ref = await self.store.put_bytes(namespace, name, data)
        artifact = pb.RunArtifact(
            path=header.path, uri=ref.uri, sha256=digest, size_bytes=len(data), created_at=timestamp(now())
        )
        return await self.runs.attach_artifact(header.run_id, artifact)

    async def download_artifact(self, request: pb.DownloadArtifactRequest) -> AsyncIterator[pb.ArtifactChunk]:
        """The file's chunks; its bytes are read whole and checked before the first one leaves."""
        uri, sha256 = await self._locate(request)
        data = await self.store.get_bytes(uri, sha256)
        return chunks_of(data, uri=uri, sha256=sha256)

    async def _locate(self, request: pb.DownloadArtifactRequest) -> tuple[str, str]:
        what = request.WhichOneof("what")
        if what == "model_version":
            ref = request.model_version
            get = pb.GetModelVersionRequest(model=ref.model)
            if ref.alias:
                get.alias = ref.alias
            elif ref.version:
                get.version = ref.version
            version = await self.versions.get_model_version(get)
            return version.artifact_uri, version.artifact_sha256
        need(what == "run_artifact", "say what to download: a model version or a run's artifact")
        run = await self.runs.get_run(pb.GetRunRequest(run_id=request.run_artifact.run_id))
        for artifact in run.artifacts:
            if artifact.path == request.run_artifact.path:
                return artifact.uri, artifact.sha256
        stored = ", ".join(a.path for a in run.artifacts) or "none"
        raise NotFound(f"run {run.run_id!r} has no artifact {request.run_artifact.path!r} (it has: {stored})")
