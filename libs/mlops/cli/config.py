"""The CLI's configuration file: named contexts, each the platform's addresses and credentials.

Like a kubeconfig: `make up` records the local stack as the context `local` and makes it current, so
`mlops` works from a plain shell with no variable set, and uploads data where the services read it.
A context is a set of the variables the settings classes read (`MLOPS_*`, the S3 credentials,
`OTEL_EXPORTER_OTLP_*`); they are applied as defaults before a command runs, so a variable set in the
shell still wins. The file may hold secrets: it is written owner-only (0600), and `mlops context
show` never prints a secret's value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mlops.errors import InvalidArgument, NotFound

CONFIG_ENV = "MLOPS_CONFIG"
CONTEXT_ENV = "MLOPS_CONTEXT"
API_VERSION = "mlops/v1"
KIND = "Config"
KEYS = re.compile(
    r"^(MLOPS_[A-Z0-9_]+|AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN|DEFAULT_REGION)"
    r"|OTEL_EXPORTER_OTLP_[A-Z0-9_]+)$"
)
"""The variables a context may set: what the settings classes and boto3 read, nothing else."""
SECRETS = re.compile(r"(SECRET|PASSWORD|TOKEN|_KEY$)")
"""Variables whose values are never printed."""
USERINFO = re.compile(r"(://[^:/@]+:)([^@]+)(@)")
"""The password of a URL (`postgresql://user:password@host`), never printed either."""
NOT_RECORDED = frozenset({CONFIG_ENV, CONTEXT_ENV, "MLOPS_ENV"})


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """`$MLOPS_CONFIG`, else `$XDG_CONFIG_HOME/mlops/config.yaml`, else `~/.config/mlops/config.yaml`."""
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    base = Path(environ["XDG_CONFIG_HOME"]) if environ.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "mlops" / "config.yaml"


@dataclass
class Config:
    current: str | None = None
    contexts: dict[str, dict[str, str]] = field(default_factory=dict)

    def context(self, name: str | None = None) -> tuple[str, dict[str, str]]:
        chosen = name or self.current
        if not chosen:
            raise NotFound("no current context: `mlops context use NAME` (see `mlops context list`)")
        if chosen not in self.contexts:
            known = ", ".join(sorted(self.contexts)) or "none"
            raise NotFound(f"no context named {chosen!r} (known: {known})")
        return chosen, self.contexts[chosen]


def load(path: Path) -> Config:
    """The file's contexts; an absent file is an empty configuration, a malformed one an error naming it."""
    if not path.exists():
        return Config()
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise InvalidArgument(f"{path}: not YAML: {error}") from None
    if not isinstance(document, dict) or document.get("kind") != KIND:
        raise InvalidArgument(f"{path}: not an mlops configuration (kind: {KIND} expected)")
    contexts: dict[str, dict[str, str]] = {}
    for index, entry in enumerate(document.get("contexts") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidArgument(f"{path}: contexts[{index}] has no name")
        settings = entry.get("settings") or {}
        unknown = sorted(key for key in settings if not KEYS.match(str(key)))
        if unknown:
            raise InvalidArgument(
                f"{path}: context {entry['name']!r} sets {', '.join(unknown)}, which no setting reads"
            )
        contexts[entry["name"]] = {str(key): str(value) for key, value in settings.items()}
    current = document.get("current-context")
    return Config(current=current if isinstance(current, str) else None, contexts=contexts)


def save(config: Config, path: Path) -> None:
    """Write atomically, owner-only: the file may hold credentials."""
    document = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "current-context": config.current,
        "contexts": [
            {"name": name, "settings": dict(sorted(values.items()))}
            for name, values in sorted(config.contexts.items())
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        yaml.safe_dump(document, handle, sort_keys=False)
    os.chmod(temporary, 0o600)
    temporary.replace(path)


def captured(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of `environ` a context records."""
    return {key: value for key, value in environ.items() if KEYS.match(key) and key not in NOT_RECORDED}


def apply(environ: MutableMapping[str, str]) -> str | None:
    """Fill `environ` with the current (or `$MLOPS_CONTEXT`'s) context, without overriding what is set.

    Returns the context's name, or None when there is no configuration file or no current context.
    """
    config = load(config_path(environ))
    name = environ.get(CONTEXT_ENV) or config.current
    if not name:
        return None
    name, values = config.context(name)
    for key, value in values.items():
        environ.setdefault(key, value)
    return name


def redacted(values: Mapping[str, str]) -> dict[str, str]:
    """The values as they may be shown: secrets replaced, passwords inside URLs too."""
    return {
        key: "<secret>" if SECRETS.search(key) else USERINFO.sub(r"\1<secret>\3", value)
        for key, value in sorted(values.items())
    }
