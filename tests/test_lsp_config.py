"""LSP options: settings first, then what the editor sends (camelCase or snake_case, bare or nested)."""

import pytest
from lsprotocol import types

from editloop.errors import BadRequestError, SettingsError
from editloop.lsp.config import LspConfig, project_name
from editloop.lsp.server import negotiated_encoding, parse_tcp
from editloop.settings import load_settings


@pytest.fixture
def config(tmp_path) -> LspConfig:
    settings = load_settings(home=tmp_path, lsp_debounce_ms=80, lsp_retention_horizons_s=[600, 30])
    return LspConfig.from_settings(settings, server_url="http://h:1", token="t")


def test_settings_are_the_defaults(config) -> None:
    assert (config.debounce_ms, config.server_url, config.token) == (80, "http://h:1", "t")
    assert config.retention_horizons_s == [30.0, 600.0]  # sorted by the settings validator
    assert config.user and config.telemetry


@pytest.mark.parametrize(
    "options",
    [
        {"debounceMs": 0, "retentionHorizonsS": [2, 1], "languages": ["rust"]},
        {"editloop": {"debounce_ms": 0, "retention_horizons_s": [1, 2], "languages": ["rust"]}},
    ],
)
def test_editor_options_override(config, options) -> None:
    updated = config.update(options)
    assert (updated.debounce_ms, updated.retention_horizons_s, updated.languages) == (0, [1.0, 2.0], ["rust"])
    assert updated.server_url == "http://h:1"  # untouched
    assert updated.completes("rust") and not updated.completes("python")
    assert config.completes("python")  # empty list: every language


def test_unknown_keys_are_ignored_and_nothing_changes_nothing(config) -> None:
    assert config.update({"editor.fontSize": 14, "other": {"x": 1}}) == config
    assert config.update(None) == config
    assert config.update({"editloop": "not a section"}) == config


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"debounceMs": -1}, "debounce_ms"),
        ({"project": "has spaces"}, "project"),
        ({"candidates": 99}, "candidates"),
    ],
)
def test_bad_values_are_refused_by_name(config, options, field) -> None:
    with pytest.raises(BadRequestError, match=field):
        config.update(options)


def test_settings_refuse_a_non_positive_horizon(tmp_path) -> None:
    with pytest.raises(SettingsError, match="lsp_retention_horizons_s"):
        load_settings(home=tmp_path, lsp_retention_horizons_s=[30, 0])


def test_project_from_a_workspace_folder() -> None:
    assert project_name("file:///home/me/src/my%20app/") == "my-20app"
    assert project_name("file:///home/me/editloop") == "editloop"
    assert project_name(None) is None


def test_tcp_address() -> None:
    assert parse_tcp("0.0.0.0:2087") == ("0.0.0.0", 2087)
    assert parse_tcp(":2087") == ("127.0.0.1", 2087)
    assert parse_tcp("2087") == ("127.0.0.1", 2087)
    for bad in ("host:", "host:99999", "host:port"):
        with pytest.raises(BadRequestError):
            parse_tcp(bad)


@pytest.mark.parametrize(
    ("offered", "expected"),
    [(None, "utf-16"), (["utf-8", "utf-16"], "utf-8"), (["utf-32"], "utf-32"), (["latin-1"], "utf-16")],
)
def test_position_encoding_follows_the_client(offered, expected) -> None:
    general = types.GeneralClientCapabilities(position_encodings=offered) if offered else None
    assert negotiated_encoding(types.ClientCapabilities(general=general)) == expected


def test_every_lsp_setting_is_an_editor_option_with_the_same_rules() -> None:
    from editloop.lsp.config import PROCESS_ONLY, SETTINGS
    from editloop.settings import Settings

    lsp_settings = {n for n in Settings.model_fields if n.startswith("lsp_")}
    assert {f"lsp_{name}" for name in (*SETTINGS, *PROCESS_ONLY)} == lsp_settings
    base = LspConfig.from_settings(load_settings())
    # The rule the settings have (horizons > 0) holds for an editor's options too.
    with pytest.raises(BadRequestError, match="retention"):
        base.update({"retentionHorizonsS": [30, -1]})
    assert base.update({"retentionHorizonsS": [600, 30]}).retention_horizons_s == [30, 600]
    with pytest.raises(BadRequestError, match="debounce"):
        base.update({"debounceMs": 999_999})  # the setting's bound (le=5000)
