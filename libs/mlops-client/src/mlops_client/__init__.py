"""A client for the platform's registry, for code outside the platform: runs with params, metrics per
step, tags and files; models registered from ONNX or from scikit-learn, LightGBM, XGBoost and PyTorch;
versions, aliases and artifacts read back.

    import mlops_client

    client = mlops_client.Client()
    with client.start_run(experiment="wine", params={"C": 1.0}) as run:
        run.log_metric("loss", 0.3, step=1)
        version = run.log_model(model, name="wine", dataset="wine@3", label="target", sample=X[:5])
"""

from mlops_client.client import Client
from mlops_client.config import Connection
from mlops_client.convert import to_onnx
from mlops_client.errors import (
    AlreadyExists,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    MissingExtra,
    MlopsError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from mlops_client.run import ActiveRun
from mlops_client.types import Alias, Artifact, Metric, ModelVersion, Run, Signature, Tensor

__all__ = [
    "ActiveRun",
    "Alias",
    "AlreadyExists",
    "Artifact",
    "Client",
    "Connection",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Metric",
    "MissingExtra",
    "MlopsError",
    "ModelVersion",
    "NotFound",
    "PermissionDenied",
    "Run",
    "Signature",
    "Tensor",
    "Unauthenticated",
    "Unavailable",
    "to_onnx",
]
