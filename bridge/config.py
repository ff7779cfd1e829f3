"""Settings of tfs-bridge, from command-line flags, TFS_BRIDGE_* environment variables and defaults.

Every Settings field has a flag (--max-batch-size) and an environment variable (TFS_BRIDGE_MAX_BATCH_SIZE).
Flags override the environment, which overrides the defaults; an empty environment variable counts as unset.
Settings validates itself when built, so a Settings object is always usable. Every problem is a ConfigError
of one line naming the flag and the variable.

`python -m bridge.config` prints the settings as a markdown table (for the README).
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import grpc

from bridge.images.address_policy import AddressPolicy
from bridge.errors import ConfigError
from bridge.model.backend import BackendKind, ModelTarget, backend_kind, valid_model_server
from bridge.records import DEFAULT_MAX_MESSAGE_BYTES

ENV_PREFIX = "TFS_BRIDGE_"
LIBRDKAFKA_SESSION_TIMEOUT_MS = 45000  # librdkafka's default session.timeout.ms
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
GROUP_PROTOCOLS = ("classic", "consumer")


# --- value kinds: how text becomes a value, and which values are valid --------------------------------------

@dataclass(frozen=True)
class Kind:
    reason: str  # what a valid value is, completing "--flag (ENV) ..."
    parse: Callable[[str], Any]  # text from a flag or the environment -> value; raises ValueError if malformed
    valid: Callable[[Any], bool]  # whether a typed value is acceptable


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda raw: parse(raw) if raw.strip() else None


def _boolean(raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _number(raw: str) -> float:
    return float(Fraction(raw.strip()))  # accepts 0.5, 1e-3 and 1/255; rejects inf and nan


_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _brokers(value: Any) -> bool:
    parts = value.split(",") if isinstance(value, str) else []
    return bool(parts) and all(part and not any(c.isspace() for c in part) for part in parts)


def _readable_file(value: Any) -> bool:
    return value is None or (isinstance(value, Path) and value.is_file() and os.access(value, os.R_OK))


TEXT = Kind("must not be empty", str.strip, lambda v: isinstance(v, str) and bool(v) and v == v.strip())
OPTIONAL_TEXT = Kind("must be a non-empty string or unset", _optional(str.strip),
                     lambda v: v is None or TEXT.valid(v))
TOPIC = Kind("must be a Kafka topic name (letters, digits, '.', '_', '-'; at most 249)", str.strip,
             lambda v: isinstance(v, str) and bool(_TOPIC.match(v)) and v not in (".", ".."))
BROKERS = Kind("must be a comma-separated list of brokers (HOST:PORT,...)", str.strip, _brokers)
MODEL_SERVERS = Kind("must be a gRPC address (HOST:PORT, a comma-separated list of them, dns:///NAME:PORT or "
                     "grpc://HOST:PORT), one http(s)://HOST:PORT URL, oip:// and a gRPC address, or a path to a "
                     ".tflite file", str.strip,
                     valid_model_server)
POSITIVE = Kind("must be a positive integer", int, lambda v: _is_int(v) and v > 0)
NON_NEGATIVE = Kind("must be a non-negative integer", int, lambda v: _is_int(v) and v >= 0)
VERSION = Kind("must be a non-negative integer (a model version) or unset", _optional(int),
               lambda v: v is None or NON_NEGATIVE.valid(v))
BOOLEAN = Kind("must be true or false", _boolean, lambda v: isinstance(v, bool))
SCALE = Kind("must be a positive number (e.g. 0.5 or 1/255)", _number,
             lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v > 0)
NUMBER = Kind("must be a finite number", _number, lambda v: isinstance(v, (int, float)) and math.isfinite(v))
LOG_LEVEL = Kind(f"must be one of {', '.join(LOG_LEVELS)}", lambda raw: raw.strip().upper(),
                 lambda v: v in LOG_LEVELS)
LOG_FORMAT = Kind(f"must be one of {', '.join(LOG_FORMATS)}", lambda raw: raw.strip().lower(),
                  lambda v: v in LOG_FORMATS)
GROUP_PROTOCOL = Kind(f"must be one of {', '.join(GROUP_PROTOCOLS)}", lambda raw: raw.strip().lower(),
                      lambda v: v in GROUP_PROTOCOLS)
PORT = Kind("must be a TCP port (0 to 65535)", int, lambda v: _is_int(v) and 0 <= v <= 65535)
FILE = Kind("must be a readable file", _optional(lambda raw: Path(raw.strip())), _readable_file)


def _allow_list(raw: str) -> tuple[str, ...]:
    return tuple(entry.strip() for entry in raw.split(",") if entry.strip())


def _valid_allow_list(value: Any) -> bool:
    try:
        AddressPolicy.from_entries(value)
    except (ConfigError, TypeError):
        return False
    return isinstance(value, tuple)


ALLOW_LIST = Kind("must be a comma-separated list of CIDRs (10.0.0.0/8), addresses (127.0.0.1) and host names "
                  "(images.internal, *.corp.example)", _allow_list, _valid_allow_list)
KAFKA_CONFIG = Kind("must be KEY=VALUE", lambda raw: raw, lambda v: isinstance(v, dict))  # parsed by _kafka_config

# librdkafka keys the bridge owns: the flag to use instead, or why the value is fixed.
FIXED_BY_EXACTLY_ONCE = "the bridge fixes it for exactly-once delivery"
FORBIDDEN_KAFKA_KEYS = {
    "bootstrap.servers": "use --bootstrap-servers",
    "metadata.broker.list": "use --bootstrap-servers",
    "group.id": "use --group-id",
    "transactional.id": "use --transactional-id",
    "max.poll.interval.ms": "use --max-poll-interval-ms",
    "transaction.timeout.ms": "use --transaction-timeout-ms",
    "group.instance.id": "use --instance-name or --no-static-membership",
    "group.protocol": "use --group-protocol",
    "enable.auto.commit": FIXED_BY_EXACTLY_ONCE + " (false)",
    "enable.auto.offset.store": FIXED_BY_EXACTLY_ONCE + " (false)",
    "isolation.level": FIXED_BY_EXACTLY_ONCE + " (read_committed)",
    "enable.idempotence": FIXED_BY_EXACTLY_ONCE + " (true)",
    "acks": FIXED_BY_EXACTLY_ONCE + " (all)",
}
_KAFKA_KEY = re.compile(r"^[A-Za-z0-9._-]+$")


def setting(default: Any, kind: Kind, meaning: str, shown: str | None = None, secret: bool = False) -> Any:
    """A Settings field: its default, kind, one-line meaning, and how the table shows the default."""
    metadata = {"kind": kind, "meaning": meaning, "shown": shown}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata, repr=not secret)
    return field(default=default, metadata=metadata, repr=not secret)


@dataclass(frozen=True)
class Settings:
    # Kafka
    bootstrap_servers: str = setting("127.0.0.1:9092", BROKERS, "Kafka brokers, comma-separated")
    input_topic: str = setting("ImageInputTopic", TOPIC, "topic of image URLs to classify")
    output_topic: str = setting("ImageOutputTopic", TOPIC, "topic the classifications go to")
    dead_letter_topic: str = setting("ImageDeadLetterTopic", TOPIC, "topic for records that cannot be classified")
    group_id: str = setting("tfs-bridge", TEXT, "Kafka consumer group")
    instance_name: str | None = setting(
        None, OPTIONAL_TEXT, "this instance's stable name, unique in its group (a pod or host name); names the "
        "default transactional.id and group.instance.id", shown="(host name)")
    transactional_id: str | None = setting(
        None, OPTIONAL_TEXT, "producer transactional.id; unset: tfs-bridge-GROUP-INPUT_TOPIC-INSTANCE_NAME",
        shown="(derived)")
    static_membership: bool = setting(
        True, BOOLEAN, "join the group as a static member (group.instance.id GROUP-INSTANCE_NAME): a restarted "
        "instance gets its partitions back at once")
    group_protocol: str = setting(
        "classic", GROUP_PROTOCOL, "consumer group protocol: classic, or consumer (KIP-848: rebalances move only the "
        "partitions that change owner; needs Kafka 4.0 or later, and the session timeout is the broker's)")
    kafka_config: dict[str, str] = setting(
        {}, KAFKA_CONFIG, "extra librdkafka setting for consumer and producer (security.protocol, sasl.*, "
        "ssl.*); repeatable; env form k=v;k=v", shown="(none)", secret=True)  # may hold passwords
    # Model server
    model_server: str = setting("127.0.0.1:8500", MODEL_SERVERS, "the model: TF Serving's gRPC API at HOST:PORT, "
                                "several (comma-separated, round-robin over those that are up) or dns:///NAME:PORT "
                                "for every address of a name; TF Serving's REST API at http(s)://HOST:PORT; the "
                                "Open Inference Protocol (Triton, KServe, MLServer) at oip://HOST:PORT; or a "
                                ".tflite file run inside the bridge (needs the embedded extra)")
    model_name: str = setting("digits", TEXT, "model name on the server")
    model_version: int | None = setting(None, VERSION, "model version; unset: the latest", shown="(latest)")
    version_label: str | None = setting(None, OPTIONAL_TEXT, "model version label; exclusive with model version",
                                        shown="(none)")
    signature_name: str = setting("serving_default", TEXT, "serving signature to call")
    grpc_tls: bool = setting(False, BOOLEAN, "use TLS to a gRPC model server (REST: an https:// URL)")
    grpc_ca_cert: Path | None = setting(None, FILE, "PEM CA bundle for TLS to the model server (gRPC or https); "
                                        "unset: the system roots",
                                        shown="(system)")
    grpc_timeout_ms: int = setting(10000, POSITIVE, "deadline of each model-server call (gRPC or REST)")
    # Batching and classification
    max_batch_size: int = setting(32, POSITIVE, "most images per Predict call")
    batch_linger_ms: int = setting(20, NON_NEGATIVE, "how long a batch waits to fill")
    max_in_flight: int = setting(4, POSITIVE, "Predict calls in flight at once")
    top_k: int = setting(5, POSITIVE, "classes reported per image")
    input_scale: float = setting(1 / 255, SCALE, "pixel scale for float32 inputs (value * scale + offset)",
                                 shown="1/255")
    input_offset: float = setting(0.0, NUMBER, "pixel offset for float32 inputs")
    # Fetching images
    fetch_concurrency: int = setting(16, POSITIVE, "image downloads at once")
    fetch_connect_timeout_ms: int = setting(3000, POSITIVE, "HTTP connect timeout")
    fetch_read_timeout_ms: int = setting(10000, POSITIVE, "HTTP read timeout (between bytes)")
    fetch_deadline_ms: int = setting(15000, POSITIVE, "total time allowed for one image download")
    fetch_max_bytes: int = setting(10485760, POSITIVE, "largest image accepted, in bytes")
    fetch_max_redirects: int = setting(5, NON_NEGATIVE, "HTTP redirects followed")
    fetch_allow: tuple[str, ...] = setting(
        (), ALLOW_LIST, "networks and host names images may come from although the address policy refuses them "
        "(loopback, private, link-local...), comma-separated", shown="(none)")
    max_image_pixels: int = setting(16_777_216, POSITIVE, "largest image accepted, in pixels (width x height), "
                                    "read from its header before decoding")
    max_decodes: int = setting(2, POSITIVE, "images decoded at once (bounds the memory decoding takes)")
    decode_processes: int = setting(0, NON_NEGATIVE, "worker processes that decode and resize images "
                                    "(0: decode in the bridge's own threads)")
    # Retries and backpressure
    retry_budget_ms: int = setting(30000, POSITIVE, "total retry time for a failing model-server call")
    retry_initial_backoff_ms: int = setting(100, POSITIVE, "first retry backoff")
    retry_max_backoff_ms: int = setting(5000, POSITIVE, "largest retry backoff")
    resume_check_interval_ms: int = setting(2000, POSITIVE, "model health check interval while paused")
    max_pause_ms: int = setting(600000, NON_NEGATIVE, "how long input may stay paused for a failing model server "
                                "before the bridge exits 1; 0: forever")
    # Transactions and lifecycle
    commit_interval_ms: int = setting(100, NON_NEGATIVE, "time between transaction commits; 0: as soon as an "
                                      "outcome is ready")
    window_records: int = setting(512, POSITIVE, "records in flight at most (polled, not yet committed); a full "
                                  "window pauses input until it drains")
    window_bytes: int = setting(16 * 2**20, POSITIVE, "bytes of record values in flight at most")
    max_poll_interval_ms: int = setting(300000, POSITIVE, "consumer max.poll.interval.ms")
    transaction_timeout_ms: int = setting(60000, POSITIVE, "producer transaction.timeout.ms")
    kafka_timeout_ms: int = setting(30000, POSITIVE, "deadline of each Kafka transaction call and of closing; "
                                    "past it the bridge exits 1")
    startup_timeout_ms: int = setting(60000, NON_NEGATIVE, "how long `run` waits for the model server at start")
    shutdown_timeout_ms: int = setting(30000, POSITIVE, "how long shutdown may take to finish the open batch")
    # Operations
    log_level: str = setting("INFO", LOG_LEVEL, "log level")
    log_format: str = setting("text", LOG_FORMAT, "log lines as text, or as one JSON object each")
    progress_interval_ms: int = setting(10000, NON_NEGATIVE, "how often the progress line (rate, lag, dead "
                                        "letters, paused) is logged; 0: never")
    metrics_port: int = setting(9464, PORT, "HTTP port of /metrics (Prometheus), /livez and /readyz; 0: none")
    metrics_host: str = setting("0.0.0.0", TEXT, "address the metrics port listens on")
    liveness_timeout_ms: int = setting(90000, POSITIVE, "how long the loop may go without a turn before /livez "
                                       "fails; must exceed --kafka-timeout-ms")
    tracing: bool = setting(False, BOOLEAN, "W3C trace context and OpenTelemetry spans, exported over OTLP/gRPC as "
                            "the OTEL_* environment variables say (needs the tracing extra)")

    def __post_init__(self) -> None:
        if isinstance(self.log_level, str):
            object.__setattr__(self, "log_level", self.log_level.strip().upper())
        if isinstance(self.grpc_ca_cert, str):
            object.__setattr__(self, "grpc_ca_cert", Path(self.grpc_ca_cert))
        for f in fields(self):
            if not f.metadata["kind"].valid(getattr(self, f.name)):
                raise _invalid(f.name, getattr(self, f.name))
        _check_kafka_config(self.kafka_config)
        self._check_combinations()

    def _check_combinations(self) -> None:
        topics = [self.input_topic, self.output_topic, self.dead_letter_topic]
        if len(set(topics)) != len(topics):
            raise ConfigError(f"{_names('input_topic')}, {_names('output_topic')} and "
                              f"{_names('dead_letter_topic')} must be three different topics, got "
                              + ", ".join(repr(t) for t in topics))
        if self.model_version is not None and self.version_label is not None:
            raise ConfigError(f"{_names('model_version')} and {_names('version_label')} are exclusive: set one")
        kind = backend_kind(self.model_server)
        if kind is BackendKind.EMBEDDED and self.version_label is not None:
            raise ConfigError(f"{_names('version_label')} needs a model server: a .tflite file has no version labels")
        if kind is BackendKind.OIP and self.version_label is not None:
            raise ConfigError(f"{_names('version_label')} is TF Serving's: the Open Inference Protocol has no version "
                              f"labels; set {_names('model_version')}")
        if self.grpc_tls and kind not in (BackendKind.GRPC, BackendKind.OIP):
            raise ConfigError(f"{_names('grpc_tls')} is for a gRPC model server; for TLS to TF Serving's REST API, "
                              "give an https:// URL as --model-server")
        if self.grpc_ca_cert is not None and not (self.grpc_tls or self.model_server.startswith("https://")):
            raise ConfigError(f"{_names('grpc_ca_cert')} needs {_names('grpc_tls')} or an https:// model server")
        if self.retry_initial_backoff_ms > self.retry_max_backoff_ms:
            raise ConfigError(f"{_names('retry_initial_backoff_ms')} must not exceed "
                              f"{_names('retry_max_backoff_ms')} ({self.retry_max_backoff_ms}), "
                              f"got '{self.retry_initial_backoff_ms}'")
        # The loop never waits on a fetch or a Predict between polls; while paused, on one health check (three
        # gRPC calls). A Kafka call that blocks is bounded by --kafka-timeout-ms and then ends the process.
        if self.max_poll_interval_ms <= 3 * self.grpc_timeout_ms:
            raise ConfigError(
                f"{_names('max_poll_interval_ms')} must exceed 3 x --grpc-timeout-ms ({3 * self.grpc_timeout_ms}), "
                f"got '{self.max_poll_interval_ms}': a health check of the model server can take that long "
                "between polls, and Kafka evicts a consumer after max.poll.interval.ms")
        if self.liveness_timeout_ms <= self.kafka_timeout_ms:
            raise ConfigError(
                f"{_names('liveness_timeout_ms')} must exceed {_names('kafka_timeout_ms')} ({self.kafka_timeout_ms}), "
                f"got '{self.liveness_timeout_ms}': one Kafka call may hold the loop that long")
        if self.commit_interval_ms >= self.transaction_timeout_ms:
            raise ConfigError(
                f"{_names('commit_interval_ms')} must be less than {_names('transaction_timeout_ms')} "
                f"({self.transaction_timeout_ms}), got '{self.commit_interval_ms}': the broker aborts "
                "a transaction left open longer than transaction.timeout.ms")

    def describe(self) -> str:
        """Every setting as one line for the startup log; kafka_config values are hidden (they may be secrets)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["kafka_config"] = "{" + ", ".join(f"{key}=***" for key in sorted(self.kafka_config)) + "}"
        return " ".join(f"{name}={value}" for name, value in values.items())

    def seconds(self, name: str) -> float:
        """A *_ms setting in seconds, e.g. settings.seconds("grpc_timeout_ms")."""
        if not name.endswith("_ms"):
            raise ValueError(f"{name} is not a milliseconds setting")
        return getattr(self, name) / 1000

    def address_policy(self) -> AddressPolicy:
        return AddressPolicy.from_entries(self.fetch_allow)

    def model_target(self) -> ModelTarget:
        return ModelTarget(self.model_name, self.model_version, self.version_label, self.signature_name)

    def grpc_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for the model server, or None for a plaintext channel."""
        if not self.grpc_tls:
            return None
        roots = self.grpc_ca_cert.read_bytes() if self.grpc_ca_cert else None
        return grpc.ssl_channel_credentials(root_certificates=roots)

    def instance(self) -> str:
        """This instance's stable name: --instance-name, else the host name (a pod's name in Kubernetes)."""
        return self.instance_name or socket.gethostname()

    def derived_transactional_id(self) -> str:
        """The explicit transactional.id, else one built from the group, the input topic and the instance name.

        Stable across restarts, so a restarted instance fences its predecessor at once (its open transaction is
        aborted); unique per instance as long as instance names are unique in the group.
        """
        return self.transactional_id or f"tfs-bridge-{self.group_id}-{self.input_topic}-{self.instance()}"

    def max_message_bytes(self) -> int:
        """The largest record the producer sends (librdkafka's message.max.bytes)."""
        return int(self.kafka_config.get("message.max.bytes", DEFAULT_MAX_MESSAGE_BYTES))

    def consumer_config(self) -> dict[str, Any]:
        """librdkafka settings for the consumer; ReadCommittedConsumer adds the exactly-once ones."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers, "group.id": self.group_id,
                                  "max.poll.interval.ms": self.max_poll_interval_ms}
        if self.static_membership:
            config["group.instance.id"] = f"{self.group_id}-{self.instance()}"
        if self.group_protocol == "consumer":
            config["group.protocol"] = "consumer"  # its session timeout is the broker's (group.consumer.*)
        elif self.max_poll_interval_ms < LIBRDKAFKA_SESSION_TIMEOUT_MS:  # librdkafka: session <= poll interval
            config["session.timeout.ms"] = self.max_poll_interval_ms
        return {**config, **self.kafka_config}

    def producer_config(self) -> dict[str, Any]:
        """librdkafka settings for the producer; TransactionalProducer adds the exactly-once ones."""
        return {"bootstrap.servers": self.bootstrap_servers, "transaction.timeout.ms": self.transaction_timeout_ms,
                **self.kafka_config}


# --- names -------------------------------------------------------------------------------------------------

def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _names(name: str) -> str:
    return f"{flag_name(name)} ({env_name(name)})"


def _invalid(name: str, value: Any) -> ConfigError:
    kind: Kind = next(f.metadata["kind"] for f in fields(Settings) if f.name == name)
    return ConfigError(f"{_names(name)} {kind.reason}, got {str(value)!r}")


def known_env_vars() -> set[str]:
    return {env_name(f.name) for f in fields(Settings)}


def _check_env(env: Mapping[str, str]) -> None:
    known = known_env_vars()
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown environment variable {name}{hint}")


# --- kafka_config ------------------------------------------------------------------------------------------

def _kafka_config(entries: Sequence[str]) -> dict[str, str]:
    """KEY=VALUE entries, later ones winning, into a dict."""
    config: dict[str, str] = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        key = key.strip()
        if not sep or not _KAFKA_KEY.match(key):
            raise ConfigError(f"{_names('kafka_config')} must be KEY=VALUE, got {entry!r}")
        config[key] = value.strip()
    return config


def _check_kafka_config(config: Mapping[str, str]) -> None:
    for key in config:
        if key in FORBIDDEN_KAFKA_KEYS:
            raise ConfigError(f"{_names('kafka_config')} may not set {key}: {FORBIDDEN_KAFKA_KEYS[key]}")
    limit = config.get("message.max.bytes")
    if limit is not None and not (limit.isdigit() and int(limit) > 0):
        raise ConfigError(f"{_names('kafka_config')} message.max.bytes must be a positive integer, got {limit!r}")


def _env_entries(text: str) -> list[str]:
    return [entry for entry in re.split(r"[;\n]", text) if entry.strip()]


# --- argparse ----------------------------------------------------------------------------------------------

class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that raises ConfigError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see {self.prog} --help)")


def _shown_default(f: Any) -> str:
    if f.metadata["shown"] is not None:
        return f.metadata["shown"]
    return str(f.default).lower() if isinstance(f.default, bool) else str(f.default)


def add_settings_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str],
                           only: Collection[str] | None = None) -> None:
    """One flag per Settings field (per field named in `only`, if given: the others keep their defaults, whatever
    the environment says); its argparse default is the environment variable's text, if set."""
    group = parser.add_argument_group(
        "settings", f"each flag has an environment variable ({ENV_PREFIX}NAME); flags win over it")
    for f in fields(Settings):
        if only is not None and f.name not in only:
            continue
        raw = env.get(env_name(f.name), "")
        default: Any = raw if raw.strip() else None
        help_text = f"{f.metadata['meaning']} [{env_name(f.name)}; default {_shown_default(f)}]".replace("%", "%%")
        kind = f.metadata["kind"]
        if kind is BOOLEAN:
            group.add_argument(flag_name(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=default, help=help_text)
        elif kind is KAFKA_CONFIG:
            group.add_argument(flag_name(f.name), dest=f.name, action="append", metavar="KEY=VALUE",
                               default=_env_entries(default) if default else None, help=help_text)
        else:
            group.add_argument(flag_name(f.name), dest=f.name, metavar=f.name.upper(), default=default,
                               help=help_text)


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Settings from parsed flags (whose defaults came from the environment); unset ones keep their defaults."""
    _check_env(env)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = getattr(args, f.name, None)
        if raw is None:
            continue
        if f.metadata["kind"] is KAFKA_CONFIG:
            values[f.name] = _kafka_config(raw)
        elif isinstance(raw, bool):
            values[f.name] = raw
        else:
            kind: Kind = f.metadata["kind"]
            try:
                values[f.name] = kind.parse(raw)
            except (ValueError, ZeroDivisionError):
                raise _invalid(f.name, raw) from None
            if not kind.valid(values[f.name]):
                raise _invalid(f.name, raw)  # the text as given, not as parsed
    return Settings(**values)


def parse_settings(argv: Sequence[str], env: Mapping[str, str]) -> Settings:
    """Settings from flags, then the environment, then the defaults."""
    parser = ArgumentParser(prog="tfs-bridge", allow_abbrev=False)
    add_settings_arguments(parser, env)
    return settings_from_args(parser.parse_args(list(argv)), env)


def settings_table() -> str:
    """Every setting as a markdown table: flag | env var | default | meaning."""
    rows = ["| flag | env var | default | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(Settings):
        meaning = f.metadata["meaning"].replace("|", "\\|")
        rows.append(f"| `{flag_name(f.name)}` | `{env_name(f.name)}` | `{_shown_default(f)}` | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
