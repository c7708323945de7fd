"""The registry client: runs, model registration, versions, aliases and artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from mlops_client import protocol
from mlops_client.config import Connection, resolve
from mlops_client.convert import to_onnx
from mlops_client.errors import DataLoss, InvalidArgument, NotFound
from mlops_client.run import ActiveRun, hardware
from mlops_client.transport import Transport
from mlops_client.types import Alias, ModelVersion, Run

CHUNK_BYTES = 1024 * 1024
RUN_STATUSES = ("RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")


class Client:
    """A connection to the platform's registry.

    `address`, `token` and `ca` default to `MLOPS_REGISTRY_ADDR`, `MLOPS_TOKEN` and `MLOPS_CA_FILE`,
    then to the `mlops` CLI's current context (`~/.config/mlops/config.yaml`). A client is cheap to
    keep for a whole session; `close()` (or `with Client() as client:`) releases its channel.
    """

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        ca: str | Path | None = None,
        *,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        context: str | None = None,
        timeout_s: float = 30.0,
        max_attempts: int = 4,
    ) -> None:
        self.connection: Connection = resolve(address, token, ca, cert, key, context=context)
        self._transport = Transport(self.connection, timeout_s=timeout_s, max_attempts=max_attempts)

    def __repr__(self) -> str:
        return f"Client(address={self.connection.address!r}, secure={self.connection.secure})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    # Runs.

    def start_run(
        self,
        experiment: str,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        dataset: str | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
    ) -> ActiveRun:
        """Start a run of `experiment`; use it as a context manager so that it ends SUCCEEDED or FAILED.

        `dataset` ("wine" or "wine@3") records what the run trained on.
        """
        name, version, sha256 = self._dataset_version(dataset)
        request = protocol.new(
            "CreateRunRequest",
            run_id=run_id or uuid.uuid4().hex,
            model=experiment,
            dataset=name,
            dataset_version=version,
            dataset_sha256=sha256,
            params=_strings(params),
            tags=_strings(tags),
            source="client",
            trigger=protocol.enum_value("mlops.events.v1.TrainingTrigger", "TRAINING_TRIGGER_EXTERNAL"),
            hardware=hardware(),
            parent_run_id=parent_run_id or "",
        )
        created = self._transport.unary("CreateRun", request)
        return ActiveRun(self, Run.from_proto(created))

    def get_run(self, run_id: str, *, history: bool = True) -> Run:
        """A run with its params, tags, final metrics, artifacts and (by default) every step's metrics."""
        reply = self._transport.unary(
            "GetRun", protocol.new("GetRunRequest", run_id=run_id, include_history=history)
        )
        return Run.from_proto(reply)

    def search_runs(
        self,
        experiment: str | None = None,
        *,
        status: str | None = None,
        dataset: str | None = None,
        max_results: int = 100,
    ) -> list[Run]:
        """Runs, newest first: of one experiment (every one if None), in one status, on one data set."""
        name, version = split_dataset(dataset)
        request = protocol.new(
            "ListRunsRequest", model=experiment or "", dataset=name, dataset_version=version
        )
        if status is not None:
            if status.upper() not in RUN_STATUSES:
                raise InvalidArgument(f"status {status!r}: one of {', '.join(RUN_STATUSES)}")
            request.status = protocol.enum_value("RunStatus", f"RUN_STATUS_{status.upper()}")
        return [
            Run.from_proto(item) for item in self._transport.paged("ListRuns", request, "runs", max_results)
        ]

    # Models.

    def register_model(
        self,
        name: str,
        model: Any,
        *,
        dataset: str | None = None,
        label: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        description: str = "",
        spec: Mapping[str, Any] | str | Path | None = None,
        sample: Any = None,
        output_names: list[str] | None = None,
        file_name: str | None = None,
    ) -> ModelVersion:
        """Register a model as the next version of `name`: ONNX bytes, a .onnx file, an onnx.ModelProto, or a
        scikit-learn, LightGBM, XGBoost or PyTorch model (converted; `sample` gives a few rows of input).

        The registry reads the signature from the graph, judges the version on `dataset` ("wine@3"; the
        spec's when None) with `label` as the target, gates it against the champion and rolls it out like
        any other. The same bytes again return the existing version with `created=False`.
        """
        data = to_onnx(model, sample=sample, output_names=output_names)
        dataset_name, dataset_version = split_dataset(dataset)
        digest = hashlib.sha256(data).hexdigest()
        header = protocol.new(
            "RegisterModelRequest.Header",
            model=name,
            dataset=dataset_name,
            dataset_version=dataset_version,
            label=label or "",
            run_id=run_id or "",
            tags=_strings(tags),
            description=description,
            file_name=file_name or (Path(model).name if isinstance(model, str | Path) else f"{name}.onnx"),
            size_bytes=len(data),
            sha256=digest,
        )
        if spec is not None:
            header.spec.CopyFrom(model_spec(spec))
        message = protocol.message_class("RegisterModelRequest")

        def requests() -> Iterator[Message]:
            yield message(header=header)
            for start in range(0, len(data), CHUNK_BYTES):
                yield message(chunk=data[start : start + CHUNK_BYTES])

        reply = self._transport.client_stream("RegisterModel", requests, timeout_s=max(60.0, len(data) / 1e6))
        return ModelVersion.from_proto(reply.model_version, created=reply.created)

    def get_model_version(
        self, name: str, version: int | None = None, alias: str | None = None
    ) -> ModelVersion:
        """A version by number or alias; the latest when neither is given."""
        if version and alias:
            raise InvalidArgument("give a version or an alias, not both")
        request = protocol.new("GetModelVersionRequest", model=name)
        if version:
            request.version = int(version)
        elif alias:
            request.alias = alias
        return ModelVersion.from_proto(self._transport.unary("GetModelVersion", request))

    def get_alias(self, name: str, alias: str) -> Alias:
        """Where `alias` of model `name` points now, who moved it last and why."""
        request = protocol.new("ListAliasesRequest", model=name)
        for item in self._transport.paged("ListAliases", request, "aliases"):
            if item.alias == alias:
                return Alias.from_proto(item)
        raise NotFound(f"model {name!r} has no alias {alias!r}")

    def list_aliases(self, name: str | None = None) -> list[Alias]:
        """The aliases of a model (every model's when None)."""
        request = protocol.new("ListAliasesRequest", model=name or "")
        return [Alias.from_proto(item) for item in self._transport.paged("ListAliases", request, "aliases")]

    def download_model(
        self, name: str, version: int | None = None, alias: str | None = None, path: str | Path | None = None
    ) -> bytes | Path:
        """A version's ONNX bytes (by number or alias; the latest when neither), checked against their sha256.

        Written to `path` when given (a directory gets `<name>-<version or alias>.onnx`) and the file's path
        returned; the bytes otherwise.
        """
        if version and alias:
            raise InvalidArgument("give a version or an alias, not both")
        selector = protocol.new(
            "DownloadArtifactRequest.ModelVersionArtifact",
            model=name,
            version=int(version or 0),
            alias=alias or "",
        )
        data = self._download(protocol.new("DownloadArtifactRequest", model_version=selector))
        return (
            data if path is None else _write(data, Path(path), f"{name}-{version or alias or 'latest'}.onnx")
        )

    def download_artifact(
        self, run_id: str, artifact_path: str, path: str | Path | None = None
    ) -> bytes | Path:
        """A file a run stored, checked against its sha256; written to `path` when given."""
        ref = protocol.new("DownloadArtifactRequest.RunArtifactRef", run_id=run_id, path=artifact_path)
        data = self._download(protocol.new("DownloadArtifactRequest", run_artifact=ref))
        return data if path is None else _write(data, Path(path), Path(artifact_path).name)

    def _dataset_version(self, dataset: str | None) -> tuple[str, int, str]:
        """(name, version, sha256) of a data set the registry holds; a name it does not know is kept as is."""
        name, version = split_dataset(dataset)
        if not name:
            return "", 0, ""
        request = protocol.new("GetDatasetVersionRequest", dataset=name)
        if version:
            request.version = version
        try:
            found = self._transport.unary("GetDatasetVersion", request)
        except NotFound:
            return name, version, ""
        return found.dataset, found.version, found.sha256

    # What runs call.

    def _call(self, name: str, **fields: Any) -> Message:
        return self._transport.unary(name, protocol.new(f"{name}Request", **fields))

    def _upload(self, run_id: str, path: str, data: bytes) -> Message:
        message = protocol.message_class("UploadRunArtifactRequest")
        header = protocol.new(
            "UploadRunArtifactRequest.Header",
            run_id=run_id,
            path=path,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

        def requests() -> Iterator[Message]:
            yield message(header=header)
            for start in range(0, len(data), CHUNK_BYTES):
                yield message(chunk=data[start : start + CHUNK_BYTES])

        return self._transport.client_stream(
            "UploadRunArtifact", requests, timeout_s=max(60.0, len(data) / 1e6)
        )

    def _download(self, request: Message) -> bytes:
        chunks = self._transport.server_stream("DownloadArtifact", request, timeout_s=300.0)
        data = b"".join(chunk.data for chunk in chunks)
        expected = chunks[0].sha256 if chunks else ""
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise DataLoss(f"downloaded {len(data)} bytes whose sha256 is not the registry's {expected}")
        return data


def split_dataset(reference: str | None) -> tuple[str, int]:
    """("wine", 3) from "wine@3"; ("wine", 0) from "wine" (0: the latest); ("", 0) from None."""
    if not reference:
        return "", 0
    name, _, version = reference.partition("@")
    if version and not version.isdigit():
        raise InvalidArgument(f"data set {reference!r}: NAME or NAME@VERSION with a number")
    return name, int(version or 0)


def model_spec(spec: Mapping[str, Any] | str | Path) -> Message:
    """A ModelSpec from a mapping (the YAML document as a dict), or from a YAML or JSON file."""
    if isinstance(spec, str | Path):
        text = Path(spec).read_text()
        try:
            import yaml
        except ImportError:
            spec = json.loads(text)
        else:
            spec = yaml.safe_load(text)
    try:
        return json_format.ParseDict(dict(spec), protocol.message_class("ModelSpec")())
    except json_format.ParseError as error:
        raise InvalidArgument(f"spec: {error}") from None


def _strings(values: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(key): str(value) for key, value in (values or {}).items()}


def _write(data: bytes, path: Path, default_name: str) -> Path:
    target = path / default_name if path.is_dir() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    temporary.replace(target)
    return target
