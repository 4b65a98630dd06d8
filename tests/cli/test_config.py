"""The flamectl configuration file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flame.cli.config import load_config
from flame.cli.errors import InputError


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_tls_paths_are_relative_to_the_config_folder(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path / "config.yaml",
            {
                "endpoint": "api:443",
                "token": "t",
                "tls": {"ca_file": "ca.pem", "cert_file": "/abs/c.pem", "server_name": "api"},
            },
        )
    )
    assert config.tls is not None
    assert config.tls.ca_file == tmp_path / "ca.pem"
    assert config.tls.cert_file == Path("/abs/c.pem")
    assert config.tls.key_file is None
    assert config.tls.server_name == "api"


def test_plaintext_means_no_tls_and_other_keys_are_left_to_other_tools(tmp_path: Path) -> None:
    data = {"endpoint": "127.0.0.1:1", "token": "t", "plaintext": True, "local": {"pid": 1}}
    config = load_config(write(tmp_path / "c.yaml", data))
    assert (config.endpoint, config.token, config.tls) == ("127.0.0.1:1", "t", None)


def test_without_tls_settings_the_system_roots_are_trusted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "c.yaml", {"endpoint": "api:443", "token": "t"}))
    assert config.tls is not None and config.tls.ca_file is None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"token": "t"}, "no 'endpoint' set: run `flamectl up`, or add it to the file"),
        ({"endpoint": "h:1"}, "no 'token' set: run `flamectl up`, or add it to the file"),
        (
            {"endpoint": "h:1", "token": "t", "plaintext": "yes"},
            "'plaintext' must be true or false",
        ),
        ({"endpoint": "h:1", "token": "t", "tls": {"ca": "x"}}, "unknown key 'tls.ca'"),
        (["endpoint"], "the configuration must be a YAML mapping"),
    ],
)
def test_a_wrong_configuration_says_what_is_wrong(
    tmp_path: Path, data: object, problem: str
) -> None:
    path = write(tmp_path / "c.yaml", data)
    with pytest.raises(InputError) as raised:
        load_config(path)
    assert raised.value.message == f"{path}: {problem}"
