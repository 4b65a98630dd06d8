"""The flamectl configuration file and the global options.

The file is YAML::

    endpoint: 127.0.0.1:10100        # the apiserver, host:port (required)
    token: flm_...                   # the API token (required)
    plaintext: false                 # true: no TLS (local development only)
    tls:                             # optional; paths are relative to this file
      ca_file: ca.pem                # CA that signed the apiserver's certificate
      cert_file: client.pem          # client certificate, for mutual TLS
      key_file: client-key.pem
      server_name: apiserver.flame.test

Without `tls` and without `plaintext`, the system's trusted roots are used.
Other top-level keys are ignored: `flamectl up` may keep its own settings in the
same file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flame.cli.errors import InputError
from flame.rpc.tls import ClientTls

__all__ = ["DEFAULT_CONFIG_PATH", "DEFAULT_TIMEOUT_SECONDS", "Config", "Settings", "load_config"]

DEFAULT_CONFIG_PATH = Path("~/.flame/config.yaml")
DEFAULT_TIMEOUT_SECONDS = 30.0

_TLS_KEYS = frozenset({"ca_file", "cert_file", "key_file", "server_name"})


@dataclass(frozen=True)
class Settings:
    """The global command-line options, shared by every subcommand through `ctx.obj`."""

    config_path: Path
    timeout: float


@dataclass(frozen=True)
class Config:
    """A loaded configuration: where the apiserver is and how to authenticate to it."""

    path: Path
    endpoint: str
    token: str
    tls: ClientTls | None
    """None means plaintext."""


def load_config(path: Path) -> Config:
    """Read and check a configuration file.

    Args:
        path: The YAML file; `~` is expanded.

    Returns:
        The configuration, with TLS file paths resolved against the file's folder.

    Raises:
        InputError: The file is missing, is not valid YAML, or lacks `endpoint` or `token`.

    Example:
        >>> load_config(Path("~/.flame/config.yaml")).endpoint
        '127.0.0.1:10100'
    """
    path = Path(os.path.expanduser(path))
    data = _read_yaml(path)
    endpoint, token = (_required_text(data, key, path) for key in ("endpoint", "token"))
    plaintext = data.get("plaintext", False)
    if not isinstance(plaintext, bool):
        raise InputError(f"{path}: 'plaintext' must be true or false")
    tls = None if plaintext else _client_tls(data.get("tls") or {}, path)
    return Config(path=path, endpoint=endpoint, token=token, tls=tls)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"no configuration at {path}: run `flamectl up`, or write the file "
            "with `endpoint` and `token` (or pass --config)"
        ) from None
    except (OSError, yaml.YAMLError) as error:
        raise InputError(f"{path}: cannot read the configuration: {error}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: the configuration must be a YAML mapping")
    return data


def _required_text(data: dict[str, Any], key: str, path: Path) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(f"{path}: no '{key}' set: run `flamectl up`, or add it to the file")
    return value


def _client_tls(section: Any, path: Path) -> ClientTls:
    if not isinstance(section, dict):
        raise InputError(f"{path}: 'tls' must be a mapping")
    unknown = sorted(set(section) - _TLS_KEYS)
    if unknown:
        raise InputError(f"{path}: unknown key 'tls.{unknown[0]}'")

    def file(key: str) -> Path | None:
        value = section.get(key)
        return path.parent / os.path.expanduser(value) if value else None

    return ClientTls(
        ca_file=file("ca_file"),
        cert_file=file("cert_file"),
        key_file=file("key_file"),
        server_name=section.get("server_name") or None,
    )
