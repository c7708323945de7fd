"""References a person types on the command line: `NAME`, `NAME@VERSION`, `NAME@ALIAS`, `NAME@SHA256`."""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ALIAS = re.compile(r"^[a-z0-9-]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class RefError(ValueError):
    """A reference that cannot be parsed; the message says what was expected."""


@dataclass(frozen=True)
class ModelRef:
    """A model version by number, by alias, or the latest when neither is given."""

    name: str
    version: int = 0
    alias: str = ""

    def __str__(self) -> str:
        if self.version:
            return f"{self.name}@{self.version}"
        if self.alias:
            return f"{self.name}@{self.alias}"
        return self.name

    def selector(self) -> dict[str, object]:
        """The `selector` oneof of GetModelVersionRequest / GetLineageRequest: empty for the latest."""
        if self.version:
            return {"version": self.version}
        if self.alias:
            return {"alias": self.alias}
        return {}


@dataclass(frozen=True)
class DatasetRef:
    """A data set version by number, by sha256, or the latest when neither is given."""

    name: str
    version: int = 0
    sha256: str = ""

    def __str__(self) -> str:
        if self.version:
            return f"{self.name}@{self.version}"
        if self.sha256:
            return f"{self.name}@{self.sha256}"
        return self.name

    def selector(self) -> dict[str, object]:
        """The `selector` oneof of GetDatasetVersionRequest: empty for the latest."""
        if self.version:
            return {"version": self.version}
        if self.sha256:
            return {"sha256": self.sha256}
        return {}


def _split(text: str, form: str) -> tuple[str, str | None]:
    text = text.strip()
    name, at, selector = text.partition("@")
    if not name:
        raise RefError(f"{text!r} names nothing; expected {form}")
    if not _NAME.match(name):
        raise RefError(f"{name!r} is not a valid name; use letters, digits, '.', '_' and '-' ({form})")
    if not at:
        return name, None
    if not selector:
        raise RefError(f"{text!r} has nothing after '@'; expected {form}")
    if "@" in selector:
        raise RefError(f"{text!r} has more than one '@'; expected {form}")
    return name, selector


def _version(text: str, selector: str) -> int:
    version = int(selector)
    if version < 1:
        raise RefError(f"{text!r}: versions start at 1")
    return version


def parse_model_ref(text: str, *, require_version: bool = False) -> ModelRef:
    """`NAME`, `NAME@VERSION` (an integer from 1) or `NAME@ALIAS` (lowercase letters, digits, dashes)."""
    form = "NAME@VERSION" if require_version else "NAME, NAME@VERSION or NAME@ALIAS"
    name, selector = _split(text, form)
    if selector is None:
        if require_version:
            raise RefError(f"{text!r} gives no version; expected {form}, e.g. {name}@3")
        return ModelRef(name)
    if selector.isdigit():
        return ModelRef(name, version=_version(text, selector))
    if require_version:
        raise RefError(f"{text!r}: {selector!r} is not a version number; expected {form}, e.g. {name}@3")
    if not _ALIAS.match(selector):
        raise RefError(
            f"{text!r}: {selector!r} is neither a version number nor an alias "
            "(lowercase letters, digits and dashes)"
        )
    return ModelRef(name, alias=selector)


def parse_dataset_ref(text: str) -> DatasetRef:
    """`NAME`, `NAME@VERSION` (an integer from 1) or `NAME@SHA256` (64 lowercase hex digits)."""
    form = "NAME, NAME@VERSION or NAME@SHA256"
    name, selector = _split(text, form)
    if selector is None:
        return DatasetRef(name)
    if selector.isdigit():
        return DatasetRef(name, version=_version(text, selector))
    if _SHA256.match(selector.lower()):
        return DatasetRef(name, sha256=selector.lower())
    raise RefError(f"{text!r}: {selector!r} is neither a version number nor a sha256; expected {form}")


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """`["k=v", …]` → `{"k": "v"}`; a later duplicate key wins."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip()
        if not eq or not key:
            raise RefError(f"label {pair!r} is not KEY=VALUE")
        labels[key] = value
    return labels
