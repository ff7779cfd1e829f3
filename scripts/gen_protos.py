"""Generate bridge/tfs_api/ and bridge/oip_api/ *_pb2*.py from protos/ with grpcio-tools (the version uv.lock pins).

The generated modules are checked in, so installing the bridge needs no code generator;
tests/unit/test_protos.py fails if they drift from the .proto files. Run after editing protos/:

    python -m scripts.gen_protos [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
# Each API's package under bridge/, and its .proto files that declare services (those get *_pb2_grpc.py too).
APIS = {
    "tfs_api": ("prediction_service.proto", "model_service.proto"),  # TF Serving
    "oip_api": ("open_inference.proto",),  # the Open Inference Protocol (KServe v2)
}


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules under out_dir/bridge/<api>/ and return their paths."""
    from grpc_tools import protoc

    include = str(resources.files("grpc_tools") / "_proto")  # google/protobuf/*.proto
    base = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}"]
    out_dir.mkdir(parents=True, exist_ok=True)
    generated: list[Path] = []
    for api, service_files in APIS.items():
        sources = sorted((PROTO_ROOT / "bridge" / api).glob("*.proto"))
        relative = [str(path.relative_to(PROTO_ROOT)) for path in sources]
        services = [name for name in relative if Path(name).name in service_files]
        for args in (
            [*base, f"--python_out={out_dir}", f"--pyi_out={out_dir}", *relative],
            [*base, f"--grpc_python_out={out_dir}", *services],
        ):
            if protoc.main(args) != 0:
                raise SystemExit(f"protoc failed: {' '.join(args)}")
        generated += sorted((out_dir / "bridge" / api).glob("*_pb2*.py*"))
    return generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT)
    for path in generate(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
