"""The checked-in generated code matches protos/, and importing the bridge never pulls in TensorFlow."""

import filecmp
import subprocess
import sys

from scripts.gen_protos import ROOT, generate


def test_generated_modules_match_the_proto_files(tmp_path):
    generated = generate(tmp_path)
    assert generated, "protoc produced nothing"
    names = {str(path.relative_to(tmp_path)) for path in generated}
    assert {name.split("/")[1] for name in names} == {"tfs_api", "oip_api"}
    stale = [name for name in sorted(names) if not filecmp.cmp(tmp_path / name, ROOT / name, shallow=False)]
    assert not stale, f"regenerate with `python -m scripts.gen_protos`: {stale} differ from protos/"
    checked_in = {str(p.relative_to(ROOT)) for api in ("tfs_api", "oip_api")
                  for p in (ROOT / "bridge" / api).glob("*_pb2*.py*")}
    assert not checked_in - names, f"generated modules without a .proto: {checked_in - names}"


def test_importing_the_bridge_does_not_import_tensorflow():
    code = "import sys, bridge, bridge.model.grpc_backend, bridge.model.rest_backend, bridge.model.oip_backend, bridge.kafka.clients; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"
