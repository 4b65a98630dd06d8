"""Build the configured registry: `registry_from_config(config)`.

`create_registry(sort, **kwargs)` builds one from explicit arguments, and
`registry_provider.get(sort, **kwargs)` is the original SDK's spelling of that call.

| sort     | `registry.uri`                              | default          |
|----------|---------------------------------------------|------------------|
| `dummy`  | ignored                                     |                  |
| `local`  | a folder, or a `file://` URI                | `~/flame-log`    |
| `mlflow` | a tracking URI: `http(s)://...`, `sqlite:///path.db` | required |

With a `sqlite:///` URI, MLflow artifacts go to `mlartifacts/` beside the database file.

Example:
    >>> registry_from_config(Config("config.json")).setup_run()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlparse

from flame.config import Config
from flame.errors import ConfigError
from flame.registry import DummyRegistry, LocalRegistry, RegistryClient, RunInfo

__all__ = [
    "DEFAULT_LOCAL_ROOT",
    "REGISTRIES",
    "create_registry",
    "registry_from_config",
    "registry_provider",
]

DEFAULT_LOCAL_ROOT: Final = Path("~/flame-log")
_SQLITE: Final = "sqlite:///"


def _mlflow(**kwargs: Any) -> RegistryClient:
    # MLflow takes seconds to import: only when configured.
    from flame.registry.mlflow import MlflowRegistry

    return MlflowRegistry(**kwargs)


REGISTRIES: Final[Mapping[str, Callable[..., RegistryClient]]] = {
    "dummy": DummyRegistry,
    "local": LocalRegistry,
    "mlflow": _mlflow,
}


def create_registry(sort: str, **kwargs: Any) -> RegistryClient:
    """A new registry client of `sort` with its constructor arguments.

    Raises:
        ConfigError: The sort is unknown or the arguments do not fit it.
    """
    factory = REGISTRIES.get(sort)
    if factory is None:
        raise ConfigError("registry.sort", f"{sort!r} is not one of {sorted(REGISTRIES)}")
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ConfigError("registry", f"does not fit registry {sort!r}: {exc}") from exc


def registry_from_config(config: Config) -> RegistryClient:
    """The registry client the task configuration asks for; see the module docstring.

    Raises:
        ConfigError: The sort is unknown, or `mlflow` has no URI.
    """
    sort, uri = config.registry.sort, config.registry.uri
    run = RunInfo(
        job_id=config.job.id, job_name=config.job.name, task_id=config.task_id, role=config.role
    )
    if sort == "local":
        return create_registry(sort, root=_local_root(uri), run=run)
    if sort == "mlflow":
        if not uri:
            raise ConfigError("registry.uri", "the mlflow registry needs a tracking URI")
        return create_registry(sort, uri=uri, run=run, artifact_location=_artifact_location(uri))
    return create_registry(sort)


def _local_root(uri: str) -> Path:
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path))
    return Path(uri or DEFAULT_LOCAL_ROOT).expanduser()


def _artifact_location(uri: str) -> str | None:
    if not uri.startswith(_SQLITE) or uri == f"{_SQLITE}:memory:":
        return None
    database = Path(uri.removeprefix(_SQLITE)).resolve()
    return str(database.parent / "mlartifacts")


class _RegistryProvider:
    """The original SDK's factory object."""

    def get(self, sort: str, **kwargs: Any) -> RegistryClient:
        """Same as `create_registry(sort, **kwargs)`."""
        return create_registry(sort, **kwargs)


registry_provider: Final = _RegistryProvider()
