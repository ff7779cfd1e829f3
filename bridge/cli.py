"""The `tfs-bridge` command: `run` the bridge, `check` that Kafka and the model server are ready for it, or
`redrive` dead letters back to the input topic (bridge.redrive).

Exit codes: 0 success, 1 a failed check or a BridgeError, 2 a bad setting (ConfigError), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from bridge import __version__
from bridge.config import ArgumentParser, Settings, add_settings_arguments, settings_from_args
from bridge.errors import BridgeError, ConfigError, FatalKafkaError, ModelServerUnavailable
from bridge.model.backend import ModelBackend, open_backend
from bridge.ops.logs import configure_logging
from bridge.redrive import options as redrive_flags

PROG = "tfs-bridge"
CHECK_TIMEOUT_S = 5.0  # per Kafka or gRPC call, so `check` answers quickly when things are down
GROUP_KEYS = ("group.id", "max.poll.interval.ms")  # consumer-only keys an AdminClient does not take

Check = tuple[bool, str]


def _hard_exit(code: int) -> None:
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
         hard_exit: Callable[[int], None] = _hard_exit) -> int:
    """The CLI; returns the exit code. After a FatalKafkaError it exits through hard_exit instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    env = os.environ if env is None else env
    try:
        try:
            args = build_parser(env).parse_args(argv)
        except SystemExit as exc:  # --help and --version
            return exc.code if isinstance(exc.code, int) else 0
        settings = settings_from_args(args, env)
        if args.command == "redrive":
            return redrive(settings, redrive_flags.redrive_options(args))
        return COMMANDS[args.command](settings)
    except ConfigError as exc:
        _error(exc)
        return 2
    except FatalKafkaError as exc:
        _error(exc)
        # The Kafka clients may be stuck inside librdkafka: their destructors could block a normal exit forever.
        hard_exit(1)
        return 1
    except BridgeError as exc:
        _error(exc)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, allow_abbrev=False,
                            description="Classify image URLs from Kafka with a TF Serving model, exactly once.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in (("run", "run the bridge until stopped"),
                          ("check", "check that Kafka, the topics and the model are ready; exit 1 if not")):
        add_settings_arguments(commands.add_parser(name, help=summary, description=summary, allow_abbrev=False),
                               env)
    redrive_parser = commands.add_parser("redrive", help=redrive_flags.SUMMARY, description=redrive_flags.DESCRIPTION,
                                         formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    redrive_flags.add_redrive_arguments(redrive_parser)
    add_settings_arguments(redrive_parser, env, only=redrive_flags.REDRIVE_SETTINGS)
    return parser


def _error(exc: BaseException) -> None:
    print(f"{PROG}: error: {_one_line(str(exc))}", file=sys.stderr)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- run ---------------------------------------------------------------------------------------------------

def run(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format)
    from bridge.loop.run import run_bridge  # imported late: the run loop and its dependencies load only for `run`

    return run_bridge(settings)


# --- check -------------------------------------------------------------------------------------------------

def check(settings: Settings) -> int:
    """Print one OK/FAIL line per check; 0 when all pass."""
    configure_logging(settings.log_level, settings.log_format)
    passed = True
    for ok, line in (*_check_kafka(settings), *_check_model(settings)):
        print(f"{'OK' if ok else 'FAIL':<4} {_one_line(line)}", flush=True)
        passed = passed and ok
    return 0 if passed else 1


def _check_kafka(settings: Settings) -> Iterator[Check]:
    config = {k: v for k, v in settings.consumer_config().items() if k not in GROUP_KEYS}
    if settings.log_level != "DEBUG":
        config.setdefault("log_level", 0)  # librdkafka's connection errors would repeat the FAIL line below
    topics = {"input": settings.input_topic, "output": settings.output_topic,
              "dead-letter": settings.dead_letter_topic}
    where = f"Kafka at {settings.bootstrap_servers}"
    started = time.monotonic()
    try:
        metadata = AdminClient(config).list_topics(timeout=CHECK_TIMEOUT_S)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        yield False, f"{where}: unreachable after {time.monotonic() - started:.1f} s: " \
                     f"{error.str() if hasattr(error, 'str') else error}"
        for role, topic in topics.items():
            yield False, f"{role} topic {topic}: not checked (Kafka unreachable)"
        return
    yield True, f"{where}: {len(metadata.brokers)} broker(s), cluster {metadata.cluster_id}"
    for role, name in topics.items():
        topic = metadata.topics.get(name)
        if topic is None:
            yield False, f"{role} topic {name}: does not exist"
        elif topic.error is not None:
            yield False, f"{role} topic {name}: {topic.error.str()}"
        else:
            yield True, f"{role} topic {name}: {len(topic.partitions)} partition(s)"


def _check_model(settings: Settings) -> Iterator[Check]:
    target = settings.model_target()
    timeout = min(settings.seconds("grpc_timeout_ms"), CHECK_TIMEOUT_S)
    backend = open_backend(settings)
    try:
        reachable = yield from _guarded(f"model status at {backend.address}", lambda: _status(backend, timeout))
        if not reachable:
            yield False, f"serving signature {target.signature_name!r}: not checked (model server unreachable)"
            return
        yield from _guarded(f"serving signature {target.signature_name!r}",
                            lambda: (True, f"serving signature {backend.signature(timeout).describe()}"))
    finally:
        backend.close()


def _status(backend: ModelBackend, timeout: float) -> Check:
    statuses = backend.status(timeout)
    versions = ", ".join(f"version {s.version} {s.state}" + (f" ({s.error})" if s.error else "") for s in statuses)
    available = any(s.state == "AVAILABLE" for s in statuses)
    return available, f"model {backend.target.name!r} at {backend.address}: {versions or 'no versions'}"


def _guarded(what: str, call: Callable[[], Check]) -> Iterator[Check]:
    """Yield the check's result, or a FAIL line for a BridgeError; returns False if the server is unreachable."""
    try:
        yield call()
    except ModelServerUnavailable as exc:
        yield False, f"{what}: {exc}"
        return False
    except BridgeError as exc:
        yield False, f"{what}: {exc}"
    return True


# --- redrive -----------------------------------------------------------------------------------------------

def redrive(settings: Settings, options: redrive_flags.RedriveOptions) -> int:
    configure_logging(settings.log_level, settings.log_format)
    from bridge.redrive.runner import run_redrive  # imported late, as `run`'s loop is

    return run_redrive(settings, options)


COMMANDS: dict[str, Callable[[Settings], int]] = {"run": run, "check": check}
