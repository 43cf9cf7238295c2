"""Settings: environment over TOML, validated at start with errors that name the fix."""

from pathlib import Path

import pytest

from editloop.errors import SettingsError
from editloop.settings import load_settings


def test_defaults_put_home_under_xdg_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EDITLOOP_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.home == tmp_path / "editloop"
    assert settings.models_dir == tmp_path / "editloop" / "models"


def test_environment_wins_over_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "editloop.toml"
    config.write_text(f'home = "{tmp_path / "from-toml"}"\nlog_level = "debug"\n')
    monkeypatch.setenv("EDITLOOP_CONFIG", str(config))
    monkeypatch.setenv("EDITLOOP_HOME", str(tmp_path / "from-env"))
    settings = load_settings()
    assert settings.home == tmp_path / "from-env"
    assert settings.log_level == "debug"


def test_bad_value_names_the_variable_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDITLOOP_LOG_LEVEL", "loud")
    with pytest.raises(SettingsError, match="EDITLOOP_LOG_LEVEL"):
        load_settings()


def test_unknown_toml_key_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "editloop.toml"
    config.write_text('hmoe = "/tmp/x"\n')
    monkeypatch.setenv("EDITLOOP_CONFIG", str(config))
    with pytest.raises(SettingsError, match="unknown setting 'hmoe'"):
        load_settings()


def test_missing_config_file_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDITLOOP_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings()


def test_home_that_is_a_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("EDITLOOP_HOME", str(tmp_path / "file"))
    with pytest.raises(SettingsError, match="not a directory"):
        load_settings()


@pytest.mark.parametrize("tokens", ['[""]', '["good", "  "]'])
def test_blank_api_tokens_are_refused_at_start(monkeypatch: pytest.MonkeyPatch, tokens: str) -> None:
    """Issue 26 #2: `EDITLOOP_API_TOKENS='["$UNSET"]'` let an empty X-Api-Key in and counted as
    "tokens set", so the server agreed to bind beyond loopback."""
    monkeypatch.setenv("EDITLOOP_API_TOKENS", tokens)
    with pytest.raises(
        SettingsError, match=r"api_tokens.*empty or blank.*remove it or give it a value.*EDITLOOP_API_TOKENS"
    ):
        load_settings()


def test_a_blank_admin_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDITLOOP_ADMIN_TOKEN", " ")
    with pytest.raises(SettingsError, match="EDITLOOP_ADMIN_TOKEN"):
        load_settings()
