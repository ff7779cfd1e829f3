"""tensorflow_model_server's command line over the project's model server (serving/model_server.py): the TF
Serving stand-in of the compose test, where the tensorflow/serving image cannot be pulled.

Takes the flags docker-compose.yml gives TF Serving, in TF Serving's --flag=value form:
--port, --rest_api_port, --model_config_file (model_config_list: each config's name and base_path),
--model_name and --model_base_path (used when there is no config file), --enable_batching with
--batching_parameters_file, and --monitoring_config_file. The model config is parsed with TF Serving's own
ModelServerConfig message; the batching and monitoring files must exist and be text protos of the fields TF
Serving knows, but the stand-in does not batch across requests or serve Prometheus metrics.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving import model_server

BATCHING_FIELDS = {"max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                   "allowed_batch_sizes", "pad_variable_length_inputs", "thread_pool_name"}
MONITORING_FIELDS = {"prometheus_config", "enable", "path"}


def flag(value: str) -> bool:
    return value.lower() in ("", "1", "true")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tensorflow_model_server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--rest_api_port", type=int, default=0)
    parser.add_argument("--model_config_file")
    parser.add_argument("--model_name", default="default")
    parser.add_argument("--model_base_path")
    parser.add_argument("--enable_batching", type=flag, nargs="?", const=True, default=False)
    parser.add_argument("--batching_parameters_file")
    parser.add_argument("--monitoring_config_file")
    return parser.parse_args(argv)


def models(args: argparse.Namespace) -> dict[str, str]:
    """{model name: base path} from the config file, else from --model_name and --model_base_path."""
    if not args.model_config_file:
        return {args.model_name: args.model_base_path} if args.model_base_path else {}
    config = text_format.Parse(Path(args.model_config_file).read_text(), model_server_config_pb2.ModelServerConfig())
    return {entry.name: entry.base_path for entry in config.model_config_list.config}


def check_text_proto(path: str, known: set[str]) -> None:
    """Fail, as TF Serving would, on a missing file or a field it does not know."""
    text = re.sub(r"#.*", "", Path(path).read_text())
    unknown = set(re.findall(r"([A-Za-z_]\w*)\s*[:{]", text)) - known - {"value"}
    if unknown:
        raise SystemExit(f"{path}: unknown fields {sorted(unknown)}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.enable_batching and args.batching_parameters_file:
        check_text_proto(args.batching_parameters_file, BATCHING_FIELDS)
    if args.monitoring_config_file:
        check_text_proto(args.monitoring_config_file, MONITORING_FIELDS)
    # serving/model_server.py serves DIR/<name>/<version>: one link per model to its base path.
    base_dir = Path(tempfile.mkdtemp(prefix="models-"))
    for name, base_path in models(args).items():
        os.symlink(base_path, base_dir / name)
    server_args = ["--model-base-dir", str(base_dir), "--host", "0.0.0.0", "--port", str(args.port)]
    if args.rest_api_port:
        server_args += ["--rest-port", str(args.rest_api_port)]
    return model_server.main(server_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
