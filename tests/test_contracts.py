"""The contracts: generated modules import, gen/ matches proto/, buf is clean."""

from __future__ import annotations

import filecmp
import importlib
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pool

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "gen"
BUF = Path(sys.executable).parent / "buf"


def generated_modules() -> list[str]:
    return sorted(
        ".".join(path.relative_to(GEN).with_suffix("").parts)
        for path in GEN.rglob("*.py")
        if path.name != "__init__.py"
    )


def test_every_generated_module_imports() -> None:
    modules = generated_modules()
    assert len(modules) >= 24
    for name in modules:
        importlib.import_module(name)


def test_every_proto_file_has_generated_modules() -> None:
    protos = sorted(ROOT.joinpath("proto").rglob("*.proto"))
    for proto in protos:
        stem = proto.relative_to(ROOT / "proto").with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert GEN.joinpath(f"{stem}{suffix}").exists(), f"{stem}{suffix} missing"


def test_gen_matches_a_fresh_generation(tmp_path: Path) -> None:
    fresh = tmp_path / "gen"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(fresh)],
        check=True,
        capture_output=True,
    )
    comparison = filecmp.dircmp(GEN, fresh)
    differences = _differences(comparison)
    assert not differences, f"gen/ drifted from proto/; run scripts/gen_protos.py: {differences}"


def _differences(comparison: filecmp.dircmp[str]) -> list[str]:
    found = [
        *comparison.left_only,
        *comparison.right_only,
        *_changed_files(comparison),
    ]
    for name, sub in comparison.subdirs.items():
        found += [f"{name}/{item}" for item in _differences(sub)]
    return [item for item in found if item != "__pycache__"]


def _changed_files(comparison: filecmp.dircmp[str]) -> list[str]:
    changed = []
    for name in comparison.common_files:
        left = Path(comparison.left, name).read_bytes()
        right = Path(comparison.right, name).read_bytes()
        if left != right:
            changed.append(name)
    return changed


def test_buf_lint_is_clean() -> None:
    result = subprocess.run([str(BUF), "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_format_is_clean() -> None:
    result = subprocess.run(
        [str(BUF), "format", "--diff", "--exit-code"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_element_is_commented() -> None:
    """The issue asks for a comment on every element: buf's COMMENTS rules check it."""
    result = subprocess.run(
        [str(BUF), "lint", "--config", _comments_config()],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _comments_config() -> str:
    return '{"version":"v2","modules":[{"path":"proto"}],"lint":{"use":["COMMENTS"]}}'


def all_proto_services() -> set[str]:
    for name in generated_modules():
        importlib.import_module(name)
    pool = descriptor_pool.Default()
    services = set()
    for name in generated_modules():
        if name.endswith("_pb2"):
            file = pool.FindFileByName(name.replace(".", "/").removesuffix("_pb2") + ".proto")
            services.update(service.full_name for service in file.services_by_name.values())
    return services


def test_proto_defines_the_planes_services() -> None:
    assert all_proto_services() >= {
        "flame.design.v1.DesignService",
        "flame.data.v1.DatasetService",
        "flame.job.v1.JobService",
        "flame.user.v1.UserService",
        "flame.compute.v1.ComputeService",
        "flame.agent.v1.AgentService",
        "flame.notify.v1.NotifyService",
        "flame.dataplane.v1.ChannelService",
        "flame.peer.v1.PeerService",
        "flame.auth.v1.AuthService",
    }
