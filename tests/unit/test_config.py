import dataclasses
import os
import socket

import pytest

from bridge.config import (ENV_PREFIX, FORBIDDEN_KAFKA_KEYS, Settings, env_name, flag_name, known_env_vars,
                           parse_settings, settings_table)
from bridge.errors import ConfigError
from bridge.model.backend import BackendKind, ModelTarget, backend_kind, grpc_servers

# A valid non-default text for every setting, and the value it parses to.
SAMPLES = {
    "bootstrap_servers": ("kafka-1:9092,kafka-2:9092", "kafka-1:9092,kafka-2:9092"),
    "input_topic": ("in", "in"),
    "output_topic": ("out", "out"),
    "dead_letter_topic": ("dlq", "dlq"),
    "group_id": ("g1", "g1"),
    "instance_name": ("bridge-0", "bridge-0"),
    "transactional_id": ("tx-1", "tx-1"),
    "static_membership": ("false", False),
    "fetch_allow": ("127.0.0.1, 10.0.0.0/8,images.internal", ("127.0.0.1", "10.0.0.0/8", "images.internal")),
    "max_image_pixels": ("1000000", 1000000),
    "max_decodes": ("4", 4),
    "decode_processes": ("2", 2),
    "max_pause_ms": ("0", 0),
    "kafka_timeout_ms": ("5000", 5000),
    "kafka_config": ("security.protocol=SASL_SSL", {"security.protocol": "SASL_SSL"}),
    "model_server": ("tfserving:9000", "tfserving:9000"),
    "model_name": ("resnet", "resnet"),
    "model_version": ("3", 3),
    "version_label": ("stable", "stable"),
    "signature_name": ("predict", "predict"),
    "grpc_tls": ("true", True),
    "grpc_ca_cert": (__file__, None),  # parsed to a Path; needs --grpc-tls, checked in its own test
    "grpc_timeout_ms": ("2000", 2000),
    "max_batch_size": ("8", 8),
    "batch_linger_ms": ("0", 0),
    "max_in_flight": ("3", 3),
    "top_k": ("3", 3),
    "input_scale": ("0.5", 0.5),
    "input_offset": ("-1", -1.0),
    "fetch_concurrency": ("4", 4),
    "fetch_connect_timeout_ms": ("1000", 1000),
    "fetch_read_timeout_ms": ("2000", 2000),
    "fetch_deadline_ms": ("5000", 5000),
    "fetch_max_bytes": ("1024", 1024),
    "fetch_max_redirects": ("0", 0),
    "retry_budget_ms": ("1000", 1000),
    "retry_initial_backoff_ms": ("50", 50),
    "retry_max_backoff_ms": ("500", 500),
    "resume_check_interval_ms": ("500", 500),
    "commit_interval_ms": ("250", 250),
    "window_records": ("64", 64),
    "window_bytes": ("1048576", 1048576),
    "max_poll_interval_ms": ("600000", 600000),
    "transaction_timeout_ms": ("30000", 30000),
    "startup_timeout_ms": ("0", 0),
    "shutdown_timeout_ms": ("1000", 1000),
    "log_level": ("debug", "DEBUG"),
    "progress_interval_ms": ("0", 0),
    "log_format": ("JSON", "json"),
    "group_protocol": (" Consumer ", "consumer"),
    "metrics_port": ("0", 0),
    "metrics_host": ("127.0.0.1", "127.0.0.1"),
    "liveness_timeout_ms": ("120000", 120000),
    "tracing": ("true", True),
}
# Settings that only make sense together with another one.
COMPANIONS = {"grpc_ca_cert": {"grpc_tls": "true"}}
FIELDS = [f.name for f in dataclasses.fields(Settings)]


def flag_args(name, text):
    booleans = {"grpc_tls": ["--grpc-tls"], "static_membership": ["--no-static-membership"],
                "tracing": ["--tracing"]}
    return booleans.get(name, [flag_name(name), text])


def error_of(argv=(), env=None):
    with pytest.raises(ConfigError) as info:
        parse_settings(list(argv), env or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults():
    settings = parse_settings([], {})
    assert settings == Settings()
    assert (settings.bootstrap_servers, settings.input_topic, settings.output_topic, settings.dead_letter_topic) == \
        ("127.0.0.1:9092", "ImageInputTopic", "ImageOutputTopic", "ImageDeadLetterTopic")
    assert (settings.model_server, settings.model_name, settings.signature_name) == \
        ("127.0.0.1:8500", "digits", "serving_default")
    assert settings.model_version is None and settings.version_label is None and settings.transactional_id is None
    assert settings.kafka_config == {} and settings.grpc_tls is False and settings.grpc_ca_cert is None
    assert settings.max_batch_size == 32 and settings.input_scale == pytest.approx(1 / 255)
    assert settings.max_poll_interval_ms == 300000 and settings.commit_interval_ms == 100
    assert settings.log_level == "INFO" and settings.progress_interval_ms == 10000


def test_samples_cover_every_setting():
    assert set(SAMPLES) == set(FIELDS)


@pytest.mark.parametrize("name", FIELDS)
def test_every_setting_has_a_flag_and_an_env_var(name):
    text, expected = SAMPLES[name]
    companions = COMPANIONS.get(name, {})
    env = {env_name(k): v for k, v in companions.items()}
    from_env = parse_settings([], {**env, env_name(name): text})
    from_flag = parse_settings(flag_args(name, text), env)
    if name == "grpc_ca_cert":
        expected = from_env.grpc_ca_cert
        assert str(expected) == __file__
    assert getattr(from_env, name) == expected != getattr(Settings(), name)
    assert getattr(from_flag, name) == expected


def test_env_var_names_follow_the_prefix():
    assert ENV_PREFIX == "TFS_BRIDGE_"
    assert known_env_vars() == {"TFS_BRIDGE_" + name.upper() for name in FIELDS}
    assert "TFS_BRIDGE_MAX_BATCH_SIZE" in known_env_vars()
    assert flag_name("max_batch_size") == "--max-batch-size"


def test_flags_override_env_which_overrides_defaults():
    env = {"TFS_BRIDGE_MAX_BATCH_SIZE": "8", "TFS_BRIDGE_TOP_K": "2"}
    settings = parse_settings(["--max-batch-size", "16"], env)
    assert settings.max_batch_size == 16 and settings.top_k == 2 and settings.max_in_flight == 4


def test_grpc_tls_flag_overrides_env_both_ways():
    assert parse_settings(["--no-grpc-tls"], {"TFS_BRIDGE_GRPC_TLS": "yes"}).grpc_tls is False
    assert parse_settings(["--grpc-tls"], {"TFS_BRIDGE_GRPC_TLS": "0"}).grpc_tls is True


def test_an_empty_env_var_counts_as_unset():
    settings = parse_settings([], {"TFS_BRIDGE_MODEL_VERSION": "", "TFS_BRIDGE_INPUT_TOPIC": " "})
    assert settings.model_version is None and settings.input_topic == "ImageInputTopic"


def test_unknown_env_var_is_rejected_with_a_suggestion():
    message = error_of(env={"TFS_BRIDGE_MAX_BATCH": "3"})
    assert "TFS_BRIDGE_MAX_BATCH" in message and "did you mean TFS_BRIDGE_MAX_BATCH_SIZE" in message


def test_other_env_vars_are_ignored():
    assert parse_settings([], {"PATH": "/bin", "TFS_BRIDGEX": "1"}) == Settings()


def test_kafka_config_flag_is_repeatable_and_merges_over_the_env_form():
    env = {"TFS_BRIDGE_KAFKA_CONFIG": "security.protocol=SASL_SSL; sasl.mechanism=PLAIN;sasl.password=a=b;"}
    settings = parse_settings(["--kafka-config", "sasl.mechanism=SCRAM-SHA-512",
                               "--kafka-config", "client.id=bridge"], env)
    assert settings.kafka_config == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                     "sasl.password": "a=b", "client.id": "bridge"}


def test_kafka_config_reaches_consumer_and_producer_configs():
    settings = parse_settings(["--kafka-config", "security.protocol=SSL", "--group-id", "g",
                               "--bootstrap-servers", "k:1", "--instance-name", "pod-1"], {})
    assert settings.consumer_config() == {"bootstrap.servers": "k:1", "group.id": "g", "group.instance.id": "g-pod-1",
                                          "max.poll.interval.ms": 300000, "security.protocol": "SSL"}
    assert settings.producer_config() == {"bootstrap.servers": "k:1", "transaction.timeout.ms": 60000,
                                          "security.protocol": "SSL"}


def test_the_consumer_group_protocol_leaves_the_session_timeout_to_the_broker():
    classic = Settings(max_poll_interval_ms=40000).consumer_config()
    assert "group.protocol" not in classic and classic["session.timeout.ms"] == 40000
    kip848 = Settings(max_poll_interval_ms=40000, group_protocol="consumer").consumer_config()
    assert kip848["group.protocol"] == "consumer" and "session.timeout.ms" not in kip848
    assert kip848["max.poll.interval.ms"] == 40000  # still the client's


@pytest.mark.parametrize("key", sorted(FORBIDDEN_KAFKA_KEYS))
def test_kafka_config_may_not_override_exactly_once_settings(key):
    message = error_of(["--kafka-config", f"{key}=x"])
    assert message.startswith("--kafka-config (TFS_BRIDGE_KAFKA_CONFIG) may not set " + key)
    with pytest.raises(ConfigError):
        Settings(kafka_config={key: "x"})


@pytest.mark.parametrize("key, advice", [("group.id", "--group-id"), ("transactional.id", "--transactional-id"),
                                         ("bootstrap.servers", "--bootstrap-servers"),
                                         ("isolation.level", "exactly-once")])
def test_forbidden_kafka_keys_say_what_to_do_instead(key, advice):
    assert advice in error_of(env={"TFS_BRIDGE_KAFKA_CONFIG": f"{key}=x"})


@pytest.mark.parametrize("entry", ["security.protocol", "=x", "bad key=1"])
def test_kafka_config_entries_must_be_key_value(entry):
    assert "--kafka-config (TFS_BRIDGE_KAFKA_CONFIG) must be KEY=VALUE" in error_of(["--kafka-config", entry])


def test_kafka_config_values_stay_out_of_repr_and_describe():
    settings = parse_settings(["--kafka-config", "sasl.password=hunter2"], {})
    assert "hunter2" not in repr(settings) and "hunter2" not in settings.describe()
    assert "sasl.password=***" in settings.describe()


@pytest.mark.parametrize("name, text", [
    ("max_batch_size", "0"), ("max_batch_size", "-3"), ("max_batch_size", "many"), ("top_k", "1.5"),
    ("grpc_timeout_ms", "0"), ("batch_linger_ms", "-1"), ("fetch_max_bytes", "0"), ("progress_interval_ms", "-1"),
    ("input_topic", "bad topic"), ("output_topic", "a/b"),
    ("model_server", "tfserving"), ("model_server", "host:http"), ("model_server", "host:70000"),
    ("model_server", "grpc://tfserving"), ("model_server", "http://"), ("model_server", "http://h:99999"),
    ("model_server", "http://a:8501,http://b:8501"), ("model_server", "https://h/?token=x"),
    ("bootstrap_servers", "a:1, b:2"), ("model_version", "latest"), ("model_version", "-1"),
    ("input_scale", "0"), ("input_scale", "inf"), ("input_offset", "nan"), ("log_level", "LOUD"),
    ("log_format", "xml"), ("group_protocol", "cooperative"), ("metrics_port", "65536"), ("metrics_port", "-1"),
    ("grpc_tls", "maybe"), ("grpc_ca_cert", "/nonexistent/ca.pem"),
])
def test_invalid_values_give_one_line_naming_flag_and_env_var(name, text):
    env = {env_name(k): v for k, v in COMPANIONS.get(name, {}).items()}
    messages = [error_of(env={**env, env_name(name): text})]
    if name != "grpc_tls":  # a switch: --grpc-tls / --no-grpc-tls take no value
        messages.append(error_of([flag_name(name), text], env))
    for message in messages:
        assert message.startswith(f"{flag_name(name)} ({env_name(name)}) must")
        assert message.endswith(f", got {text!r}")


@pytest.mark.parametrize("value, kind", [
    ("tfserving:8500", BackendKind.GRPC), ("grpc://tfserving:8500", BackendKind.GRPC),
    ("a:8500,b:8500", BackendKind.GRPC), ("dns:///tfserving:8500", BackendKind.GRPC),
    ("http://tfserving:8501", BackendKind.REST), ("https://models.example/tfs/", BackendKind.REST),
    ("models/digits/1/model.tflite", BackendKind.EMBEDDED), ("/abs/path/m.tflite", BackendKind.EMBEDDED),
    ("oip://triton:8001", BackendKind.OIP), ("oip://a:8001,b:8001", BackendKind.OIP),
    ("oip://dns:///kserve:8081", BackendKind.OIP),
])
def test_the_model_server_value_chooses_the_backend(value, kind):
    settings = parse_settings(["--model-server", value], {})
    assert backend_kind(settings.model_server) is kind
    if value.startswith("grpc://"):
        assert grpc_servers(settings.model_server) == "tfserving:8500"


@pytest.mark.parametrize("value", ["oip://", "oip://triton", "oip://http://triton:8001", "oip://a:1,,b:2"])
def test_an_oip_model_server_needs_a_grpc_address(value):
    assert error_of(["--model-server", value]).startswith("--model-server (TFS_BRIDGE_MODEL_SERVER) must be")


def test_the_open_inference_protocol_has_no_version_labels():
    message = error_of(["--model-server", "oip://triton:8001", "--version-label", "stable"])
    assert "the Open Inference Protocol has no version labels" in message


def test_grpc_tls_applies_to_the_open_inference_protocol_too():
    assert parse_settings(["--model-server", "oip://triton:8001", "--grpc-tls"], {}).grpc_credentials() is not None


@pytest.mark.parametrize("value", ["http://tfserving:8501", "models/digits/1/model.tflite"])
def test_grpc_tls_is_refused_where_it_cannot_apply(value):
    message = error_of(["--model-server", value, "--grpc-tls"])
    assert message.startswith("--grpc-tls (TFS_BRIDGE_GRPC_TLS) is for a gRPC model server")


def test_a_version_label_needs_a_model_server():
    message = error_of(["--model-server", "m.tflite", "--version-label", "stable"])
    assert message.startswith("--version-label (TFS_BRIDGE_VERSION_LABEL) needs a model server")


def test_a_ca_bundle_goes_with_an_https_model_server():
    settings = parse_settings(["--model-server", "https://tfserving:8501", "--grpc-ca-cert", __file__], {})
    assert settings.grpc_ca_cert is not None
    assert "needs" in error_of(["--model-server", "http://tfserving:8501", "--grpc-ca-cert", __file__])


def test_an_empty_flag_value_is_rejected():
    assert error_of(["--input-topic", ""]).startswith("--input-topic (TFS_BRIDGE_INPUT_TOPIC) must")


def test_the_example_message():
    assert error_of(["--max-batch-size", "0"]) == \
        "--max-batch-size (TFS_BRIDGE_MAX_BATCH_SIZE) must be a positive integer, got '0'"


def test_the_three_topics_must_differ():
    message = error_of(["--dead-letter-topic", "ImageOutputTopic"])
    assert "--dead-letter-topic (TFS_BRIDGE_DEAD_LETTER_TOPIC)" in message and "different" in message


def test_model_version_and_label_are_exclusive():
    message = error_of(["--model-version", "1", "--version-label", "stable"])
    assert "--model-version (TFS_BRIDGE_MODEL_VERSION)" in message and "--version-label" in message


def test_ca_cert_needs_tls():
    assert "--grpc-tls" in error_of(["--grpc-ca-cert", __file__])


def test_retry_initial_backoff_must_not_exceed_max():
    message = error_of(["--retry-initial-backoff-ms", "6000"])
    assert message.startswith("--retry-initial-backoff-ms (TFS_BRIDGE_RETRY_INITIAL_BACKOFF_MS)")
    assert "--retry-max-backoff-ms" in message


def test_max_poll_interval_must_exceed_the_longest_wait_between_polls():
    # Slow fetches and Predict calls no longer count: the loop polls while they run.
    message = error_of(["--max-poll-interval-ms", "30000"])
    assert message.startswith("--max-poll-interval-ms (TFS_BRIDGE_MAX_POLL_INTERVAL_MS) must exceed")
    assert "(30000)" in message and "between polls" in message
    settings = ["--max-poll-interval-ms", "30001", "--fetch-deadline-ms", "600000", "--retry-budget-ms", "600000"]
    assert parse_settings(settings, {}).max_poll_interval_ms == 30001


def test_commit_interval_must_be_shorter_than_the_transaction_timeout():
    message = error_of(["--commit-interval-ms", "60000"])
    assert message.startswith("--commit-interval-ms (TFS_BRIDGE_COMMIT_INTERVAL_MS)")
    assert "--transaction-timeout-ms" in message


@pytest.mark.parametrize("argv", [["--no-such-flag"], ["--max-batch-size"], ["--max-batch"], ["stray"]])
def test_argparse_errors_are_config_errors(argv):
    assert "tfs-bridge --help" in error_of(argv)


def test_settings_validate_when_built_directly():
    with pytest.raises(ConfigError, match=r"^--top-k \(TFS_BRIDGE_TOP_K\) must be a positive integer, got '0'$"):
        Settings(top_k=0)
    assert Settings(log_level="warning").log_level == "WARNING"


def test_model_target():
    settings = parse_settings(["--model-name", "m", "--model-version", "7", "--signature-name", "s"], {})
    assert settings.model_target() == ModelTarget("m", 7, None, "s")
    assert parse_settings(["--version-label", "canary"], {}).model_target().version_label == "canary"


def test_transactional_id_is_explicit_or_stable_per_instance():
    assert Settings(transactional_id="tx").derived_transactional_id() == "tx"
    assert Settings(group_id="g", input_topic="in").derived_transactional_id() == \
        f"tfs-bridge-g-in-{socket.gethostname()}"
    assert Settings(group_id="g", input_topic="in", instance_name="pod-2").derived_transactional_id() == \
        "tfs-bridge-g-in-pod-2"
    assert str(os.getpid()) not in Settings().derived_transactional_id().split("-")


def test_static_membership_uses_the_instance_name_and_can_be_turned_off():
    assert Settings(group_id="g").consumer_config()["group.instance.id"] == f"g-{socket.gethostname()}"
    assert "group.instance.id" not in Settings(static_membership=False).consumer_config()


def test_max_message_bytes_follows_librdkafkas_setting():
    assert Settings().max_message_bytes() == 1_000_000
    assert Settings(kafka_config={"message.max.bytes": "200000"}).max_message_bytes() == 200_000
    with pytest.raises(ConfigError, match="message.max.bytes must be a positive integer"):
        Settings(kafka_config={"message.max.bytes": "1MB"})


def test_seconds():
    assert Settings().seconds("grpc_timeout_ms") == 10.0
    with pytest.raises(ValueError):
        Settings().seconds("top_k")


def test_grpc_credentials_only_with_tls():
    assert Settings().grpc_credentials() is None
    assert Settings(grpc_tls=True).grpc_credentials() is not None


def test_settings_table_has_a_row_per_setting():
    table = settings_table().splitlines()
    assert table[0] == "| flag | env var | default | meaning |"
    assert len(table) == 2 + len(FIELDS)
    assert "| `--max-batch-size` | `TFS_BRIDGE_MAX_BATCH_SIZE` | `32` |" in table[2 + FIELDS.index("max_batch_size")]


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "not a host!", "300.1.2.3"])
def test_a_bad_allow_list_entry_is_one_line_naming_the_flag(entry):
    message = error_of(["--fetch-allow", f"127.0.0.1,{entry}"])
    assert message.startswith("--fetch-allow (TFS_BRIDGE_FETCH_ALLOW) must be a comma-separated list")


def test_the_allow_list_opens_the_address_policy():
    policy = parse_settings(["--fetch-allow", "127.0.0.1"], {}).address_policy()
    from ipaddress import ip_address

    assert policy.check("127.0.0.1", ip_address("127.0.0.1")).allowed
    assert not Settings().address_policy().check("127.0.0.1", ip_address("127.0.0.1")).allowed


def test_the_readme_table_lists_every_setting_as_the_code_defines_it():
    from pathlib import Path

    from bridge.config import settings_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert settings_table() in readme


def test_a_subcommand_may_take_only_some_settings_and_ignores_the_environment_of_the_others():
    import argparse

    from bridge.config import add_settings_arguments, settings_from_args

    env = {"TFS_BRIDGE_INPUT_TOPIC": "in", "TFS_BRIDGE_MAX_BATCH_SIZE": "0"}  # the batch size is invalid, and unused
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, env, only=("input_topic", "group_id"))
    settings = settings_from_args(parser.parse_args(["--group-id", "g"]), env)
    assert (settings.input_topic, settings.group_id, settings.max_batch_size) == ("in", "g", 32)
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-batch-size", "8"])
