"""Isolation settings: arguments > ``configure()`` > environment > defaults, and clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import dbsession
from dbsession import ConfigurationError, Settings, get_settings


def test_defaults_are_direct_mode() -> None:
    assert get_settings(environ={}) == Settings()
    assert get_settings(environ={}).database_access_isolation is False


def test_environment_is_read() -> None:
    settings = get_settings(environ={
        "DATABASE_ACCESS_ISOLATION": "true", "DATABASE_API_HOST": "http://env:1",
        "DATABASE_API_TOKEN": "env-token"})
    assert settings == Settings(database_access_isolation=True, database_api_host="http://env:1",
                                token="env-token")


def test_configure_beats_environment_and_arguments_beat_configure() -> None:
    environ = {"DATABASE_ACCESS_ISOLATION": "true", "DATABASE_API_HOST": "http://env:1",
               "DATABASE_API_TOKEN": "env-token"}
    dbsession.configure(database_api_host="http://configured:2", token="configured-token")
    settings = get_settings(environ=environ)
    assert (settings.database_api_host, settings.token) == ("http://configured:2", "configured-token")
    assert settings.database_access_isolation is True  # still from the environment

    settings = get_settings(environ=environ, database_api_host="http://argument:3")
    assert (settings.database_api_host, settings.token) == ("http://argument:3", "configured-token")

    dbsession.configure(database_access_isolation=False)
    assert get_settings(environ=environ).database_access_isolation is False
    assert get_settings(environ=environ, database_access_isolation=True).database_access_isolation is True


def test_none_arguments_do_not_override() -> None:
    dbsession.configure(database_access_isolation=True, database_api_host="http://configured:2")
    settings = get_settings(environ={}, database_api_host=None, database_access_isolation=None)
    assert (settings.database_access_isolation, settings.database_api_host) == (True, "http://configured:2")


def test_reset_configuration_forgets() -> None:
    dbsession.configure(database_api_host="http://configured:2")
    dbsession.reset_configuration()
    assert get_settings(environ={}).database_api_host is None


def test_real_environment_is_the_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_API_HOST", "http://from-os-environ:9")
    assert get_settings().database_api_host == "http://from-os-environ:9"


@pytest.mark.parametrize(("raw", "value"), [
    ("1", True), ("TRUE", True), (" yes ", True), ("on", True),
    ("0", False), ("False", False), ("no", False), ("off", False), ("", False),
])
def test_boolean_spellings(raw: str, value: bool) -> None:
    environ = {"DATABASE_ACCESS_ISOLATION": raw, "DATABASE_API_HOST": "http://h:1"}
    assert get_settings(environ=environ).database_access_isolation is value


def test_bad_boolean_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_ACCESS_ISOLATION='maybe' is not a boolean"):
        get_settings(environ={"DATABASE_ACCESS_ISOLATION": "maybe"})


def test_isolation_without_host_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_API_HOST") as caught:
        get_settings(environ={"DATABASE_ACCESS_ISOLATION": "true"})
    assert "database_api_host" in str(caught.value)
    assert isinstance(caught.value, RuntimeError)  # misuse errors are RuntimeErrors


def test_empty_host_counts_as_missing() -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_API_HOST"):
        get_settings(environ={"DATABASE_ACCESS_ISOLATION": "1", "DATABASE_API_HOST": ""})


def test_token_and_token_file_contradict() -> None:
    with pytest.raises(ConfigurationError, match="either a token or a token_file"):
        get_settings(environ={}, token="t", token_file="/tmp/t")


def test_unknown_setting_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="Unknown setting.*database_url"):
        dbsession.configure(database_url="postgresql://secret@db/x")


def test_commit_retry_deadline_from_environment_configure_and_argument() -> None:
    assert get_settings(environ={}).commit_retry_deadline == 30.0
    environ = {"DATABASE_API_COMMIT_RETRY_DEADLINE": "120"}
    assert get_settings(environ=environ).commit_retry_deadline == 120.0
    assert get_settings(environ={"DATABASE_API_COMMIT_RETRY_DEADLINE": " "}).commit_retry_deadline == 30.0
    dbsession.configure(commit_retry_deadline=5)
    assert get_settings(environ=environ).commit_retry_deadline == 5
    assert get_settings(environ=environ, commit_retry_deadline=0.5).commit_retry_deadline == 0.5


@pytest.mark.parametrize(("raw", "message"), [
    ("soon", "DATABASE_API_COMMIT_RETRY_DEADLINE='soon' is not a number of seconds"),
    ("0", "must be a number of seconds above 0, got 0.0"),
    ("-5", "must be a number of seconds above 0, got -5.0"),
    ("nan", "must be a number of seconds above 0, got nan"),
])
def test_bad_commit_retry_deadline_is_refused(raw: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        get_settings(environ={"DATABASE_API_COMMIT_RETRY_DEADLINE": raw})


def test_remembered_settings_follow_the_environment_and_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    """get_settings() remembers its answers; every input they depend on still takes effect at once."""
    monkeypatch.setenv("DATABASE_API_HOST", "http://first:1")
    first = get_settings()
    assert get_settings() is first  # remembered
    monkeypatch.setenv("DATABASE_API_HOST", "http://second:2")
    assert get_settings().database_api_host == "http://second:2"
    dbsession.configure(database_api_host="http://configured:3")
    assert get_settings().database_api_host == "http://configured:3"
    assert get_settings(database_api_host="http://argument:4").database_api_host == "http://argument:4"
    dbsession.reset_configuration()
    assert get_settings().database_api_host == "http://second:2"
    monkeypatch.setenv("DATABASE_API_TOKEN", "new-token")  # scrubbed again, and seen
    assert get_settings().token == "new-token"
    assert "DATABASE_API_TOKEN" not in os.environ
    monkeypatch.setenv("DATABASE_ACCESS_ISOLATION", "maybe")
    for _ in range(2):  # an error is not remembered as an answer
        with pytest.raises(ConfigurationError, match="DATABASE_ACCESS_ISOLATION='maybe'"):
            get_settings()


def test_a_remembered_token_file_is_checked_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("t")
    token_file.chmod(0o600)
    monkeypatch.setenv("DATABASE_API_TOKEN_FILE", str(token_file))
    settings = dict(database_access_isolation=True, database_api_host="http://h:1")
    assert get_settings(**settings).token_file == str(token_file)
    token_file.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        get_settings(**settings)
