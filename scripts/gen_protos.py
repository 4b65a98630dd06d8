#!/usr/bin/env python3
"""Regenerate gen/ from proto/: message, gRPC and typed-stub modules.

The only way gen/ is written. Run it after any change under proto/; the test
suite fails when gen/ drifts from what this script produces.
Pinned tools: grpcio-tools 1.85.1 (protoc 35.1) and mypy-protobuf 5.1.0.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out_dir: Path) -> None:
    """Write every generated module for proto/ into `out_dir` (emptied first)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    bin_dir = Path(sys.executable).parent
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    subprocess.run(command, check=True, cwd=PROTO_DIR)
    # Regular packages (not namespace ones) below flame/, so that tools which
    # walk packages find every generated module; flame/ itself stays a namespace
    # shared with src/.
    for package in out_dir.joinpath("flame").rglob("*"):
        if package.is_dir():
            package.joinpath("__init__.py").touch()


def main() -> int:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "gen"
    generate(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
