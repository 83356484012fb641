"""The settings a stage reads from its environment: each variable's name, its default (as
docs/configuration.md gives it), and a clear ConfigError naming the variable for a bad value."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from chalicelib.errors import ConfigError
from chalicelib.runtime import settings
from chalicelib.runtime.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
NAMES = [value for name, value in vars(settings).items()
         if name.isupper() and isinstance(value, str) and value == name]
FLAGS = {"ZEYI_ENCRYPT": False, "CALLBACK_ENCRYPTED": False, "CALLBACK_REQUIRE_TOKEN": True,
         "FILES_ALLOW_HTTP": False}
INTEGERS = ["TOKEN_TTL_SECONDS", "TIMESTAMP_SKEW_SECONDS", "SECRETS_CACHE_SECONDS",
            "SUBMIT_LEASE_SECONDS", "CANCEL_LEASE_SECONDS", "STUCK_PENDING_SECONDS",
            "FILES_MAX_BYTES", "FILES_UPLOAD_SECONDS", "FILES_DOWNLOAD_SECONDS",
            "FILES_GRACE_SECONDS", "FILES_URL_HORIZON_SECONDS"]
# Documented as another setting's value, not a number.
DEFAULTS_BY_NAME = {"FILES_URL_HORIZON_SECONDS": "STUCK_PENDING_SECONDS"}
# Read by the bootstrap (ops.files_bucket), not by the gateway.
BOOTSTRAP_ONLY = {"FILES_RETENTION_DAYS"}
FLOATS = ["ZEYI_CONNECT_TIMEOUT_SECONDS", "ZEYI_READ_TIMEOUT_SECONDS", "ZEYI_DEADLINE_SECONDS",
          "AWS_CONNECT_TIMEOUT_SECONDS", "AWS_READ_TIMEOUT_SECONDS"]
TEXTS = {"APPROVALS_TABLE": "approvals", "NONCES_TABLE": "nonces",
         "OUTBOUND_SECRET_ID": "jinrun/zeyi/outbound", "INBOUND_SECRET_ID": "jinrun/zeyi/inbound",
         "TOKEN_SECRET_ID": "jinrun/zeyi/token-key", "ZEYI_BASE_URL": "https://test.shjiuze.cn",
         "EVENT_BUS_NAME": "approval-events", "ATTACHMENTS_BUCKET": "jinrun-attachments",
         "PUBLIC_BASE_URL": ""}


@pytest.fixture(autouse=True)
def bare_environment(monkeypatch):
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _documented_defaults() -> dict[str, str]:
    """`NAME` (default) pairs from docs/configuration.md's list of variables."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    return dict(re.findall(r"`([A-Z_]+)`\s+\((\d+|true|false)\b", text))


def test_the_settings_module_names_every_variable_the_tests_cover():
    assert set(NAMES) == {*FLAGS, *INTEGERS, *FLOATS, *TEXTS, "ALLOWED_SOURCE_IPS",
                          "APPROVALS_STREAM_ARN", "FILES_READ_BUCKETS", "FILES_ALLOWED_TYPES"}


def test_every_documented_default_is_the_one_read():
    documented = _documented_defaults()
    assert set(documented) == {*FLAGS, *INTEGERS, *FLOATS, *BOOTSTRAP_ONLY} - set(DEFAULTS_BY_NAME)
    loaded = load_settings()
    for name, other in DEFAULTS_BY_NAME.items():
        assert getattr(loaded, name.lower()) == getattr(loaded, other.lower()), name
    for name, default in documented.items():
        if name in BOOTSTRAP_ONLY:
            continue
        value = getattr(loaded, name.lower())
        expected = {"true": True, "false": False}.get(default, default)
        assert value == (expected if isinstance(expected, bool) else float(expected)), name
        assert type(value) is (bool if name in FLAGS else int if name in INTEGERS else float)


def test_names_and_places_default_to_the_local_ones():
    loaded = load_settings()
    assert {name: getattr(loaded, name.lower()) for name in TEXTS} == TEXTS
    assert loaded.allowed_source_ips == ()


def test_each_setting_is_read_from_its_own_variable_and_trimmed(bare_environment):
    for number, name in enumerate([*INTEGERS, *FLOATS], start=2):
        bare_environment.setenv(name, f" {number} ")
    for name, default in FLAGS.items():
        bare_environment.setenv(name, f" {'no' if default else 'YES'} ")
    for name in TEXTS:
        bare_environment.setenv(name, f"  stage-{name.lower()}  ")
    loaded = load_settings()
    for number, name in enumerate([*INTEGERS, *FLOATS], start=2):
        assert getattr(loaded, name.lower()) == number, name
    for name, default in FLAGS.items():
        assert getattr(loaded, name.lower()) is not default, name
    for name in TEXTS:
        assert getattr(loaded, name.lower()) == f"stage-{name.lower()}", name


@pytest.mark.parametrize("word", ["1", "true", "True", "yes", "ON"])
def test_words_for_true(bare_environment, word):
    bare_environment.setenv("ZEYI_ENCRYPT", word)
    assert load_settings().zeyi_encrypt is True


@pytest.mark.parametrize("word", ["0", "false", "FALSE", "no", "off", "", "  "])
def test_words_for_false(bare_environment, word):
    bare_environment.setenv("CALLBACK_REQUIRE_TOKEN", word)
    assert load_settings().callback_require_token is False


def test_any_other_flag_value_names_the_variable(bare_environment):
    bare_environment.setenv("CALLBACK_ENCRYPTED", "maybe")
    with pytest.raises(ConfigError, match="^setting CALLBACK_ENCRYPTED must be true or false,"
                                          " got 'maybe'$"):
        load_settings()


@pytest.mark.parametrize(("name", "raw", "why"), [
    ("TOKEN_TTL_SECONDS", "0", "must be positive"),
    ("TOKEN_TTL_SECONDS", "-5", "must be positive"),
    ("TOKEN_TTL_SECONDS", "2.5", "must be a number"),
    ("ZEYI_READ_TIMEOUT_SECONDS", "soon", "must be a number"),
    ("AWS_READ_TIMEOUT_SECONDS", "0.0", "must be positive"),
])
def test_a_number_that_is_not_positive_or_not_a_number_names_the_variable(
        bare_environment, name, raw, why):
    bare_environment.setenv(name, raw)
    with pytest.raises(ConfigError, match=f"^setting {name} {why}, got '{re.escape(raw)}'$"):
        load_settings()


def test_the_smallest_positive_numbers_are_accepted(bare_environment):
    bare_environment.setenv("TIMESTAMP_SKEW_SECONDS", "1")
    bare_environment.setenv("ZEYI_CONNECT_TIMEOUT_SECONDS", "0.01")
    loaded = load_settings()
    assert (loaded.timestamp_skew_seconds, loaded.zeyi_connect_timeout_seconds) == (1, 0.01)


def test_an_empty_number_is_its_default(bare_environment):
    bare_environment.setenv("SUBMIT_LEASE_SECONDS", "  ")
    assert load_settings().submit_lease_seconds == 120


def test_a_nonce_outlives_the_timestamp_window_twice_over(bare_environment):
    bare_environment.setenv("TIMESTAMP_SKEW_SECONDS", "45")
    assert load_settings().nonce_ttl_seconds == 180


def test_allowed_source_ips_are_split_on_commas_and_blanks_dropped(bare_environment):
    bare_environment.setenv("ALLOWED_SOURCE_IPS", " 10.0.0.1 , ,10.1.0.0/16,")
    assert load_settings().allowed_source_ips == ("10.0.0.1", "10.1.0.0/16")


@pytest.mark.parametrize(("given", "read"), [
    ("http://127.0.0.1:9000//", "http://127.0.0.1:9000"),
    ("https://zeyi.example/gateway-X/", "https://zeyi.example/gateway-X"),
])
def test_the_zeyi_base_url_loses_its_trailing_slashes_and_nothing_else(
        bare_environment, given, read):
    bare_environment.setenv("ZEYI_BASE_URL", given)
    assert load_settings().zeyi_base_url == read


def test_the_stream_is_the_stages_or_the_stand_in_ops_refuses_to_deploy(bare_environment):
    assert settings.approvals_stream_arn() == settings.STREAM_ARN_UNSET
    assert settings.STREAM_ARN_UNSET.startswith("arn:aws:dynamodb:")
    bare_environment.setenv("APPROVALS_STREAM_ARN", "   ")
    assert settings.approvals_stream_arn() == settings.STREAM_ARN_UNSET
    arn = "arn:aws:dynamodb:cn-north-1:123456789012:table/approvals/stream/2026-01-01T00:00:00"
    bare_environment.setenv("APPROVALS_STREAM_ARN", f" {arn} ")
    assert settings.approvals_stream_arn() == arn
