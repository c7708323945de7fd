"""Where the registry is and how to reach it: arguments, then the environment, then the CLI's context.

The `mlops` CLI keeps named contexts in `~/.config/mlops/config.yaml` (`$MLOPS_CONFIG`,
`$XDG_CONFIG_HOME`), each a set of `MLOPS_*` variables; `make up` writes one for the local stack. The
client reads the same file, so code on a machine where `mlops` works needs no setting at all. Each value
is resolved on its own: an argument wins over a variable, which wins over the current context.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlops_client.errors import InvalidArgument, NotFound

DEFAULT_ADDRESS = "127.0.0.1:50051"

# Each setting, and the variables that give it, first match wins: the short names for people, the
# platform's own names for contexts the CLI wrote.
ADDRESS = ("MLOPS_REGISTRY_ADDR",)
TOKEN = ("MLOPS_TOKEN", "MLOPS_GRPC_CLIENT_TOKEN")
CA = ("MLOPS_CA_FILE", "MLOPS_GRPC_CLIENT_CA_FILE")
CERT = ("MLOPS_CERT_FILE", "MLOPS_GRPC_CLIENT_CERT_FILE")
KEY = ("MLOPS_KEY_FILE", "MLOPS_GRPC_CLIENT_KEY_FILE")
SERVER_NAME = ("MLOPS_GRPC_CLIENT_SERVER_NAME",)
TLS = ("MLOPS_TLS", "MLOPS_GRPC_CLIENT_TLS")


@dataclass(frozen=True)
class Connection:
    """How to reach the registry. The token is kept out of repr()."""

    address: str = DEFAULT_ADDRESS
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = field(default=None, repr=False)
    server_name: str | None = None
    tls: bool = False
    context: str | None = None

    @property
    def secure(self) -> bool:
        return self.tls or self.ca is not None or self.cert is not None


def config_path(environ: Mapping[str, str]) -> Path:
    """The CLI's file: `$MLOPS_CONFIG`, else `$XDG_CONFIG_HOME/mlops/config.yaml`, else `~/.config/...`."""
    if environ.get("MLOPS_CONFIG"):
        return Path(environ["MLOPS_CONFIG"])
    base = Path(environ["XDG_CONFIG_HOME"]) if environ.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "mlops" / "config.yaml"


def resolve(
    address: str | None = None,
    token: str | None = None,
    ca: str | Path | None = None,
    cert: str | Path | None = None,
    key: str | Path | None = None,
    *,
    context: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Connection:
    """The connection from the arguments, the environment and the CLI's context, in that order."""
    environ = os.environ if environ is None else environ
    name, settings = _context(context or environ.get("MLOPS_CONTEXT"), config_path(environ))

    def pick(given: object, names: tuple[str, ...]) -> str | None:
        if given not in (None, ""):
            return str(given)
        for source in (environ, settings):
            for variable in names:
                if source.get(variable):
                    return source[variable]
        return None

    def path(given: object, names: tuple[str, ...]) -> Path | None:
        value = pick(given, names)
        if value is None:
            return None
        file = Path(value).expanduser()
        if not file.is_file():
            raise InvalidArgument(f"{names[0]}: no file at {file}")
        return file

    connection = Connection(
        address=pick(address, ADDRESS) or DEFAULT_ADDRESS,
        ca=path(ca, CA),
        cert=path(cert, CERT),
        key=path(key, KEY),
        token=pick(token, TOKEN),
        server_name=pick(None, SERVER_NAME),
        tls=(pick(None, TLS) or "").lower() in ("1", "true", "yes"),
        context=name,
    )
    if (connection.cert is None) != (connection.key is None):
        raise InvalidArgument("a client certificate and its key go together: give both or neither")
    if connection.token and not connection.secure:
        raise InvalidArgument(
            "a token needs TLS (give `ca`, or set MLOPS_CA_FILE or MLOPS_TLS=true): "
            "a token sent in plaintext can be read and replayed"
        )
    return connection


def _context(wanted: str | None, file: Path) -> tuple[str | None, dict[str, str]]:
    """The named (or current) context's variables; none when there is no file and none was named."""
    if not file.is_file():
        if wanted:
            raise NotFound(f"no context named {wanted!r}: {file} does not exist")
        return None, {}
    current, contexts = read_config(file)
    name = wanted or current
    if not name:
        return None, {}
    if name not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        raise NotFound(f"no context named {name!r} in {file} (known: {known})")
    return name, contexts[name]


def read_config(file: Path) -> tuple[str | None, dict[str, dict[str, str]]]:
    """The file's current context and every context's variables."""
    text = file.read_text()
    try:
        import yaml
    except ImportError:  # PyYAML is optional: the CLI writes a small subset of YAML that we can read
        document = _read_simple_yaml(text, file)
    else:
        try:
            document = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise InvalidArgument(f"{file}: not YAML: {error}") from None
    if not isinstance(document, dict) or document.get("kind") != "Config":
        raise InvalidArgument(f"{file}: not an mlops configuration (kind: Config expected)")
    contexts: dict[str, dict[str, str]] = {}
    for index, entry in enumerate(document.get("contexts") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidArgument(f"{file}: contexts[{index}] has no name")
        contexts[entry["name"]] = {str(k): str(v) for k, v in (entry.get("settings") or {}).items()}
    current = document.get("current-context")
    return (current if isinstance(current, str) else None), contexts


_LINE = re.compile(r"^(?P<indent> *)(?P<dash>- )?(?P<key>[A-Za-z0-9_.-]+):(?: (?P<value>.*))?$")


def _scalar(raw: str | None) -> object:
    if raw is None or raw in ("", "null", "~"):
        return None
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1].replace("''", "'")
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1].encode().decode("unicode_escape")
    return raw


def _read_simple_yaml(text: str, file: Path) -> dict[str, object]:
    """The CLI's file as `yaml.safe_dump` writes it: top-level keys, a list of contexts, their settings."""
    document: dict[str, object] = {}
    contexts: list[dict[str, object]] = []
    entry: dict[str, object] | None = None
    section: dict[str, object] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise InvalidArgument(
                f"{file}:{number}: cannot read this line without PyYAML (pip install pyyaml)"
            )
        key, value, indent = match["key"], match["value"], len(match["indent"])
        if match["dash"]:
            entry, section = {key: _scalar(value)}, None
            contexts.append(entry)
        elif indent == 0:
            document[key] = contexts if key == "contexts" else _scalar(value)
            entry = section = None
        elif entry is not None and value is None and key == "settings":
            section = entry.setdefault("settings", {})  # type: ignore[assignment]
        elif section is not None and indent > 2:
            section[key] = _scalar(value)
        elif entry is not None:
            entry[key] = _scalar(value)
    return document
