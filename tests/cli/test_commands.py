"""flamectl against fake services: paging, call metadata, streaming, and how failures read."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from flame.cli.main import main
from tests.cli.fakes import CODE, TOKEN, FakeControlPlane, fake_control_plane, write_config


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeControlPlane]:
    with fake_control_plane(tmp_path) as plane:
        yield plane


def test_a_list_pages_through_every_page(fake: FakeControlPlane) -> None:
    result = fake.flamectl("get", "designs")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "SCHEMA-REV", "CODE-REV", "CREATED"]
    assert [line.split()[0] for line in lines[1:]] == ["d0", "d1", "d2", "d3", "d4"]
    assert fake.calls.page_tokens == ["", "2", "4"]


def test_limit_caps_the_items_and_stops_paging(fake: FakeControlPlane) -> None:
    result = fake.flamectl("get", "designs", "--limit", "3", "-o", "json")
    assert result.exit_code == 0, result.output
    assert [d["id"] for d in json.loads(result.stdout)] == ["d0", "d1", "d2"]
    assert fake.calls.page_tokens == ["", "2"]


def test_every_call_carries_the_token_and_a_deadline(fake: FakeControlPlane) -> None:
    assert fake.flamectl("--timeout", "7", "get", "designs").exit_code == 0
    assert fake.calls.metadata
    for metadata, remaining in zip(fake.calls.metadata, fake.calls.time_remaining, strict=True):
        assert metadata["authorization"] == f"Bearer {TOKEN}"
        # The server sees the client's deadline, give or take clock granularity.
        assert remaining is not None and 5 < remaining < 8


def test_tls_trusts_the_ca_named_relative_to_the_config(tmp_path: Path) -> None:
    with fake_control_plane(tmp_path, tls=True) as plane:
        result = plane.flamectl("user", "whoami", "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"id": "alice"}


def test_yaml_output_uses_camel_case_keys(fake: FakeControlPlane) -> None:
    result = fake.flamectl("get", "design", "d1", "-o", "yaml")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout) == {"id": "d1", "name": "design 1"}


def test_json_output_keeps_integer_hyperparameters_integers(fake: FakeControlPlane) -> None:
    result = fake.flamectl("get", "job", "j1", "-o", "json")
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["modelSpec"]["hyperparameters"] == {"rounds": 5, "learningRate": 0.01}
    assert job["state"] == "STATE_RUNNING"


def test_job_table_shows_state_and_task_counts(fake: FakeControlPlane) -> None:
    result = fake.flamectl("get", "job", "j1")
    assert result.exit_code == 0, result.output
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert rows["STATE"] == "running"
    assert rows["TASKS"] == "running=2"
    assert rows["ENDED"] == "-"


def test_not_found_names_the_resource(fake: FakeControlPlane) -> None:
    result = fake.flamectl("get", "design", "ghost")
    assert result.exit_code == 1
    assert result.stderr == "flamectl: design 'ghost' not found\n"
    assert result.stdout == ""


def test_field_violations_are_listed_one_per_line(fake: FakeControlPlane, tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text('{"name": "s", "roles": [], "channels": []}')
    result = fake.flamectl("create", "schema", str(schema), "--design", "d1")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "flamectl: invalid schema:",
        "  schema.channels[0].pair[1]: no role 'ghost'",
        "  schema.roles[0].name: must not be empty",
    ]


def test_an_illegal_transition_names_the_current_state(fake: FakeControlPlane) -> None:
    result = fake.flamectl("start", "job", "j1")
    assert result.exit_code == 1
    assert result.stderr == "flamectl: cannot start job 'j1' while it is running\n"


def test_a_bad_token_says_how_to_fix_it(fake: FakeControlPlane, tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.yaml", fake.address, token="wrong")
    result = CliRunner().invoke(main, ["--config", str(config), "user", "whoami"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"flamectl: not authenticated: run flamectl up or check the token in {config}\n"
    )


def test_an_unreachable_apiserver_is_named(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    config = write_config(tmp_path / "config.yaml", address)
    result = CliRunner().invoke(main, ["--config", str(config), "get", "designs"])
    assert result.exit_code == 1
    assert result.stderr == f"flamectl: cannot reach the apiserver at {address}\n"


def test_a_slow_apiserver_hits_the_deadline(fake: FakeControlPlane) -> None:
    result = fake.flamectl("--timeout", "0.3", "get", "design", "slow")
    assert result.exit_code == 1
    assert result.stderr == "flamectl: the apiserver did not answer within 0.3 s\n"


def test_code_is_uploaded_as_metadata_then_1_mib_chunks(
    fake: FakeControlPlane, tmp_path: Path
) -> None:
    bundle = tmp_path / "mnist.zip"
    content = bytes(range(256)) * (10 * 1024)  # 2.5 MiB
    bundle.write_bytes(content)
    result = fake.flamectl("create", "code", str(bundle), "--design", "mnist")
    assert result.exit_code == 0, result.output
    assert "code revision 1 stored for design 'mnist'" in result.stdout
    first, *chunks = fake.designs.upload
    assert first.metadata.design_id == "mnist"
    assert first.metadata.file_name == "mnist.zip"
    assert [len(c.chunk) for c in chunks] == [1 << 20, 1 << 20, len(content) - (2 << 20)]
    assert b"".join(c.chunk for c in chunks) == content


def test_code_download_writes_the_zip_named_after_the_design(
    fake: FakeControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = fake.flamectl("get", "code", "--design", "mnist")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mnist.zip").read_bytes() == CODE
    assert list(tmp_path.glob("*.part")) == []


def test_a_corrupt_download_leaves_no_file(fake: FakeControlPlane, tmp_path: Path) -> None:
    fake.designs.code_sha256 = "0" * 64
    target = tmp_path / "out.zip"
    result = fake.flamectl("get", "code", "--design", "mnist", "-f", str(target))
    assert result.exit_code == 1
    assert "corrupt" in result.stderr
    assert list(tmp_path.glob("out.zip*")) == []


def test_a_missing_configuration_points_to_flamectl_up(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    result = CliRunner().invoke(main, ["get", "designs"], env={"FLAME_CONFIG": str(missing)})
    assert result.exit_code == 2
    assert result.stderr.startswith(f"flamectl: no configuration at {missing}: run `flamectl up`")


def test_update_design_without_changes_is_a_usage_error(fake: FakeControlPlane) -> None:
    result = fake.flamectl("update", "design", "d1")
    assert result.exit_code == 2
    assert "nothing to update" in result.stderr
