"""The network the trainer fits, with its preprocessing inside, so the exported graph takes raw features.

`Preprocessor` turns the raw `input` tensor (features in schema order, text features as category
codes, NaN for missing) into what the MLP sees: numeric columns imputed with the training mean
(`isnan`/`where`) and standardised with the training mean and std; text columns one-hot encoded
from their codes (a missing or unseen code gives all zeros). `Exported` wraps the trained network
with the public outputs: `probabilities` [-1, C] and `label` [-1] (INT64 argmax) for
classification, `prediction` [-1] for regression (the target's standardisation undone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class FeatureStats:
    """What preprocessing learns from the training split."""

    numeric_index: list[int]
    mean: list[float]
    std: list[float]
    categorical_index: list[int]
    category_counts: list[int]
    target_mean: float = 0.0
    target_std: float = 1.0

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        categorical_index: list[int],
        category_counts: list[int],
        target: np.ndarray | None = None,
    ) -> FeatureStats:
        numeric_index = [i for i in range(features.shape[1]) if i not in categorical_index]
        numeric = features[:, numeric_index].astype(np.float64)
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(numeric, axis=0) if numeric.size else np.zeros(0)
            std = np.nanstd(numeric, axis=0) if numeric.size else np.zeros(0)
        mean = np.nan_to_num(mean, nan=0.0)
        std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
        target_mean, target_std = 0.0, 1.0
        if target is not None:
            target_mean = float(np.mean(target))
            target_std = float(np.std(target)) or 1.0
        return cls(
            numeric_index=numeric_index,
            mean=[float(m) for m in mean],
            std=[float(s) for s in std],
            categorical_index=list(categorical_index),
            category_counts=list(category_counts),
            target_mean=target_mean,
            target_std=target_std,
        )

    @property
    def width(self) -> int:
        """Columns the MLP sees after preprocessing."""
        return len(self.numeric_index) + sum(self.category_counts)


class Preprocessor(nn.Module):
    def __init__(self, stats: FeatureStats) -> None:
        super().__init__()
        self.register_buffer("numeric_index", torch.tensor(stats.numeric_index, dtype=torch.int64))
        self.register_buffer("mean", torch.tensor(stats.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(stats.std, dtype=torch.float32))
        self.categorical = [
            (index, count)
            for index, count in zip(stats.categorical_index, stats.category_counts, strict=True)
        ]
        for position, (_, count) in enumerate(self.categorical):
            self.register_buffer(f"codes_{position}", torch.arange(count, dtype=torch.float32))
        self.has_numeric = bool(stats.numeric_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.has_numeric:
            numeric = torch.index_select(x, 1, self.numeric_index)
            numeric = torch.where(torch.isnan(numeric), self.mean, numeric)
            parts.append((numeric - self.mean) / self.std)
        for position, (index, _) in enumerate(self.categorical):
            codes = getattr(self, f"codes_{position}")
            # NaN == k and -1 == k are both false: missing and unseen values encode as all zeros.
            parts.append((x[:, index : index + 1] == codes).to(torch.float32))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


class Network(nn.Module):
    """Preprocessing, then Linear → ReLU → Dropout per hidden layer, then a linear head (logits or value)."""

    def __init__(self, stats: FeatureStats, hidden_layers: list[int], outputs: int, dropout: float) -> None:
        super().__init__()
        self.preprocess = Preprocessor(stats)
        layers: list[nn.Module] = []
        width = stats.width
        for size in hidden_layers:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, outputs))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.preprocess(x))


class ExportedClassifier(nn.Module):
    def __init__(self, network: Network) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = torch.softmax(self.network(x), dim=1)
        return probabilities, torch.argmax(probabilities, dim=1)


class ExportedRegressor(nn.Module):
    def __init__(self, network: Network, target_mean: float, target_std: float) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("target_mean", torch.tensor(target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(target_std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x).squeeze(1) * self.target_std + self.target_mean


def exported(network: Network, task: str, stats: FeatureStats) -> nn.Module:
    """The module whose outputs are the public tensors, in eval mode on the CPU."""
    network = network.to("cpu").eval()
    module: nn.Module = (
        ExportedClassifier(network)
        if task == "classification"
        else ExportedRegressor(network, stats.target_mean, stats.target_std)
    )
    return module.eval()


def output_names(task: str) -> list[str]:
    return ["probabilities", "label"] if task == "classification" else ["prediction"]
