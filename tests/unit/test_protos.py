"""The checked-in generated code matches protos/, and importing the bridge never pulls in TensorFlow."""

import filecmp
import subprocess
import sys

from scripts.gen_protos import ROOT, generate


def test_generated_modules_match_the_proto_files(tmp_path):
    generated = generate(tmp_path)
    assert generated, "protoc produced nothing"
    checked_in = ROOT / "bridge" / "tfs_api"
    stale = [path.name for path in generated if not filecmp.cmp(path, checked_in / path.name, shallow=False)]
    assert not stale, f"regenerate with `python -m scripts.gen_protos`: {stale} differ from protos/"
    extra = {p.name for p in checked_in.glob("*_pb2*.py*")} - {p.name for p in generated}
    assert not extra, f"generated modules without a .proto: {extra}"


def test_importing_the_bridge_does_not_import_tensorflow():
    code = "import sys, bridge, bridge.model.grpc_backend, bridge.model.rest_backend, bridge.kafka.clients; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"
