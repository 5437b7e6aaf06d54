"""Settings layering: defaults < TOML file < HEADRACE_* environment < flags; errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from headrace.config.errors import ConfigError
from headrace.config.settings import Settings, load_settings


def test_defaults_bind_loopback_on_the_documented_ports() -> None:
    s = load_settings(environ={})
    assert (s.host, s.http_port, s.grpc_port, s.control_port) == ("127.0.0.1", 9000, 9500, 9004)
    assert s.max_body_bytes == 100 * 1024 * 1024
    assert s.worker_count >= 1


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "h.toml"
    toml.write_text('http_port = 1111\ngrpc_port = 2222\nhost = "127.0.0.2"\nload_files = ["a.yaml"]\n')
    env = {
        "HEADRACE_GRPC_PORT": "3333",
        "HEADRACE_MODEL_TIMEOUT_S": "2.5",
        "HEADRACE_SERVER_FILES": "x.yaml,y.yaml",
    }
    s = load_settings(str(toml), {"host": "127.0.0.3", "workers": None}, environ=env)
    assert s.http_port == 1111  # file
    assert s.grpc_port == 3333  # env beats file
    assert s.host == "127.0.0.3"  # flag beats file
    assert s.model_timeout_s == 2.5
    assert s.server_files == ("x.yaml", "y.yaml")
    assert s.load_files == ("a.yaml",)
    assert s.workers == Settings().workers  # a flag left unset does not override


def test_config_file_from_environment(tmp_path: Path) -> None:
    toml = tmp_path / "h.toml"
    toml.write_text("workers = 3\n")
    assert load_settings(environ={"HEADRACE_CONFIG": str(toml)}).worker_count == 3


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    toml = tmp_path / "h.toml"
    toml.write_text("http_prot = 1\n")
    with pytest.raises(ConfigError, match="http_prot"):
        load_settings(str(toml), environ={})


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="HEADRACE_HTTP_PORT"):
        load_settings(environ={"HEADRACE_HTTP_PORT": "ninety"})


def test_wrong_type_in_file_is_reported(tmp_path: Path) -> None:
    toml = tmp_path / "h.toml"
    toml.write_text('http_port = "x"\n')
    with pytest.raises(ConfigError, match="http_port"):
        load_settings(str(toml), environ={})


def test_kafka_defaults_run_an_embedded_apache_kafka_on_loopback() -> None:
    s = load_settings(environ={})
    assert (s.kafka_bootstrap, s.embedded_broker) == ("", "kafka")
    assert (s.kafka_host, s.kafka_port, s.kafka_controller_port) == ("127.0.0.1", 9092, 9093)
    assert s.kafka_config == {}


def test_kafka_bootstrap_servers_env_is_the_weakest_layer(tmp_path: Path) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "seldon:9092"}
    assert load_settings(environ=env).kafka_bootstrap == "seldon:9092"
    toml = tmp_path / "h.toml"
    toml.write_text('kafka_bootstrap = "file:9092"\n')
    assert load_settings(str(toml), environ=env).kafka_bootstrap == "file:9092"
    env["HEADRACE_KAFKA_BOOTSTRAP"] = "ours:9092"
    assert load_settings(environ=env).kafka_bootstrap == "ours:9092"
    assert load_settings(overrides={"kafka_bootstrap": "flag:1"}, environ=env).kafka_bootstrap == "flag:1"


def test_kafka_config_from_toml_table_and_env_pairs(tmp_path: Path) -> None:
    toml = tmp_path / "h.toml"
    toml.write_text('[kafka_config]\n"security.protocol" = "SASL_SSL"\n"sasl.mechanism" = "PLAIN"\n')
    s = load_settings(str(toml), environ={})
    assert s.kafka_config == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}
    env = {"HEADRACE_KAFKA_CONFIG": "linger.ms=5, consumer.fetch.wait.max.ms=10,sasl.password=a=b"}
    assert load_settings(environ=env).kafka_config == {
        "linger.ms": "5",
        "consumer.fetch.wait.max.ms": "10",
        "sasl.password": "a=b",
    }
    with pytest.raises(ConfigError, match="HEADRACE_KAFKA_CONFIG"):
        load_settings(environ={"HEADRACE_KAFKA_CONFIG": "no-equals-sign"})


def test_embedded_broker_is_validated() -> None:
    assert load_settings(environ={"HEADRACE_EMBEDDED_BROKER": "tansu"}).embedded_broker == "tansu"
    with pytest.raises(ConfigError, match="embedded_broker"):
        load_settings(environ={"HEADRACE_EMBEDDED_BROKER": "redpanda"})
