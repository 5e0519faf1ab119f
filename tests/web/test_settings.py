"""Settings: flags over SESSIONARY_* variables over the TOML file, and clear errors."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from sessionary.web.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SESSIONARY_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sessionary.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings.store == "sqlite:///sessionary.db"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.namespaces["web"].idle_ttl == timedelta(minutes=30)
    assert settings.playground.session_limit == 50


def test_flags_beat_environment_beat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(
        tmp_path,
        'store = "memory://"\nport = 9000\nhost = "0.0.0.0"\n'
        '[playground]\nsession_limit = 3\nip_window = "12h"\n'
        '[namespaces.api]\nidle_ttl = "5m"\nabsolute_ttl = "1h30m"\n',
    )
    monkeypatch.setenv("SESSIONARY_PORT", "9100")
    monkeypatch.setenv("SESSIONARY_PLAYGROUND__SESSION_LIMIT", "7")
    monkeypatch.setenv("SESSIONARY_API_KEYS", '["from-the-environment-key"]')
    settings = load_settings(config, port=9200, host=None)
    assert settings.port == 9200  # flag
    assert settings.playground.session_limit == 7  # environment
    assert settings.host == "0.0.0.0"  # file (the flag was not given)
    assert settings.playground.ip_window == timedelta(hours=12)
    assert settings.namespaces["api"].absolute_ttl == timedelta(hours=1, minutes=30)
    assert settings.api_keys[0].key.get_secret_value() == "from-the-environment-key"
    assert settings.api_keys[0].allows("anything")


@pytest.mark.parametrize(
    ("toml", "complaint"),
    [
        ("prot = 80\n", "prot: unknown setting"),
        ("[playground]\nsesion_limit = 1\n", "playground.sesion_limit: unknown setting"),
        ('port = "eighty"\n', "port: Input should be a valid integer"),
        ("port = 70000\n", "port: Input should be less than or equal to 65535"),
        ('[namespaces.web]\nidle_ttl = "soon"\n', "namespaces.web.idle_ttl"),
        ('[playground]\ntrusted_proxies = ["not-a-network"]\n', "playground.trusted_proxies.0"),
        ('api_keys = ["short"]\n', "api_keys.0.key"),
    ],
)
def test_bad_files_say_which_key_and_what_was_expected(
    tmp_path: Path, toml: str, complaint: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(complaint)):
        load_settings(write(tmp_path, toml))


def test_unknown_environment_variables_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONARY_STOER", "memory://")
    with pytest.raises(SettingsError, match="SESSIONARY_STOER: unknown setting"):
        load_settings()
    monkeypatch.delenv("SESSIONARY_STOER")
    monkeypatch.setenv("SESSIONARY_PLAYGROUND__NOPE", "1")
    with pytest.raises(SettingsError, match=r"playground\.nope: unknown setting"):
        load_settings()


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such file"):
        load_settings(tmp_path / "absent.toml")
