"""A run in progress: params, metrics per step, tags, files and models, ended by its context manager."""

from __future__ import annotations

import os
import platform
import socket
import threading
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from mlops_client import protocol
from mlops_client.convert import to_onnx
from mlops_client.errors import InvalidArgument, MlopsError
from mlops_client.types import Artifact, ModelVersion, Run

if TYPE_CHECKING:
    from mlops_client.client import Client

_SOFTWARE = ("mlops-client", "numpy", "scikit-learn", "lightgbm", "xgboost", "torch", "onnx")


class ActiveRun:
    """A RUNNING run. As a context manager it ends SUCCEEDED, or FAILED with the exception's text
    (CANCELLED on Ctrl-C); `end()` ends it by hand.

    Metrics are kept per step: the registry stores a step's metrics as one record, so each call sends
    every value of its step, and a metric logged without a step gets the one after its last.
    """

    def __init__(self, client: Client, run: Run) -> None:
        self._client = client
        self.info = run
        self.run_id = run.run_id
        self.model_version = 0
        self._steps: dict[int, dict[str, float]] = {}
        self._last: dict[str, float] = {}
        self._last_step: dict[str, int] = {}
        self._lock = threading.Lock()
        self._ended = False

    def __repr__(self) -> str:
        return f"ActiveRun(run_id={self.run_id!r}, experiment={self.info.experiment!r})"

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: object) -> None:
        if self._ended:
            return
        if error is None:
            self.end("SUCCEEDED")
            return
        status = "CANCELLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        try:
            self.end(status, error="interrupted" if status == "CANCELLED" else f"{kind.__name__}: {error}")
        except MlopsError as failure:  # the block's own exception is the one to see
            error.add_note(f"and run {self.run_id} could not be marked {status}: {failure.message}")

    # Params and tags.

    def log_param(self, key: str, value: Any) -> None:
        """A param, once set, keeps its value: setting it to another is InvalidArgument."""
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._update(params={str(k): str(v) for k, v in params.items()})

    def set_tag(self, key: str, value: Any) -> None:
        self.set_tags({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._update(set_tags={str(k): str(v) for k, v in tags.items()})

    def delete_tag(self, key: str) -> None:
        self._update(remove_tags=[key])

    # Metrics.

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        """One value of a metric at a step (from 1); the metric's next step when none is given."""
        self.log_metrics({key: value}, step=step)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Several metrics at one step; without a step, each at the one after its last."""
        values = {str(key): float(value) for key, value in metrics.items()}
        with self._lock:
            by_step: dict[int, dict[str, float]] = {}
            for key, value in values.items():
                at = step if step is not None else self._last_step.get(key, 0) + 1
                if isinstance(at, bool) or not isinstance(at, int) or at < 1:
                    raise InvalidArgument(f"metric {key!r}: step {at!r} is not an integer from 1")
                by_step.setdefault(at, {})[key] = value
            epochs = []
            for at, logged in sorted(by_step.items()):
                merged = {**self._steps.get(at, {}), **logged}
                epochs.append(protocol.new("EpochMetrics", epoch=at, metrics=merged))
                epochs[-1].logged_at.GetCurrentTime()
            self._client._call("LogRunMetrics", run_id=self.run_id, epochs=epochs)
            for at, logged in by_step.items():
                self._steps.setdefault(at, {}).update(logged)
                for key, value in logged.items():
                    if at >= self._last_step.get(key, 0):
                        self._last_step[key] = at
                        self._last[key] = value

    # Files and models.

    def log_artifact(self, source: str | Path | bytes, path: str | None = None) -> Artifact:
        """Store a file (a local path, or bytes with `path`) under the run, at `path` (default: its name)."""
        if isinstance(source, bytes | bytearray | memoryview):
            if not path:
                raise InvalidArgument("bytes need a path to be stored at, e.g. path='plots/loss.png'")
            data = bytes(source)
        else:
            file = Path(source)
            if not file.is_file():
                raise InvalidArgument(f"no file at {file}")
            data = file.read_bytes()
            path = path or file.name
        return Artifact.from_proto(self._client._upload(self.run_id, path, data))

    def log_artifacts(self, directory: str | Path, path: str = "") -> list[Artifact]:
        """Store every file under a directory, at the same relative paths (under `path`)."""
        root = Path(directory)
        if not root.is_dir():
            raise InvalidArgument(f"no directory at {root}")
        files = sorted(item for item in root.rglob("*") if item.is_file())
        prefix = path.strip("/")
        return [
            self.log_artifact(file, "/".join(p for p in (prefix, file.relative_to(root).as_posix()) if p))
            for file in files
        ]

    def log_model(
        self,
        model: Any,
        name: str,
        *,
        dataset: str | None = None,
        label: str | None = None,
        sample: Any = None,
        tags: Mapping[str, Any] | None = None,
        description: str = "",
        spec: Mapping[str, Any] | str | Path | None = None,
        output_names: list[str] | None = None,
    ) -> ModelVersion:
        """Register a model made by this run as the next version of `name` and return that version.

        `model` is ONNX (bytes, a file, an onnx.ModelProto) or a scikit-learn, LightGBM, XGBoost or
        PyTorch model, converted with skl2onnx, onnxmltools or torch.onnx (`sample`: a few rows of input,
        required for PyTorch). The run records the version when it ends.
        """
        data = to_onnx(model, sample=sample, output_names=output_names)
        version = self._client.register_model(
            name,
            data,
            dataset=dataset or _dataset_of(self.info),
            label=label,
            run_id=self.run_id,
            tags=tags,
            description=description,
            spec=spec,
            file_name=f"{name}.onnx",
        )
        self.model_version = version.version
        return version

    # The end.

    def end(self, status: str = "SUCCEEDED", *, error: str = "") -> Run:
        """End the run as SUCCEEDED, FAILED or CANCELLED, with the last value of each metric as final."""
        status = status.upper()
        if status not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            raise InvalidArgument(f"status {status!r}: SUCCEEDED, FAILED or CANCELLED")
        fields: dict[str, Any] = {
            "run_id": self.run_id,
            "status": protocol.enum_value("RunStatus", f"RUN_STATUS_{status}"),
            "metrics": dict(self._last),
            "model_version": self.model_version,
        }
        if status == "FAILED":
            fields["error"] = error[:2000] or "failed"
            fields["failed_stage"] = protocol.enum_value(
                "mlops.events.v1.TrainingStage", "TRAINING_STAGE_TRAIN"
            )
        finished = self._client._call("FinishRun", **fields)
        self._ended = True
        self.info = Run.from_proto(finished)
        return self.info

    def _update(self, **fields: Any) -> None:
        reply: Message = self._client._call("UpdateRun", run_id=self.run_id, **fields)
        self.info = Run.from_proto(reply)


def _dataset_of(run: Run) -> str | None:
    if not run.dataset:
        return None
    return f"{run.dataset}@{run.dataset_version}" if run.dataset_version else run.dataset


def hardware() -> Message:
    """The machine the run is on, for the run's record."""
    software = {"python": platform.python_version()}
    for package in _SOFTWARE:
        try:
            software[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return protocol.new(
        "Hardware",
        device="cpu",
        cpu_count=os.cpu_count() or 0,
        hostname=socket.gethostname(),
        software=software,
    )
