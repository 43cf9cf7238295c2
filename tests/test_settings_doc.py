"""docs/configuration.md is generated from the Settings object: this fails when they drift apart."""

from editloop.settings import Settings
from editloop.settings_doc import DOC, main, render


def test_configuration_doc_is_what_the_settings_generate() -> None:
    assert DOC.is_file(), "docs/configuration.md is missing: run `python -m editloop.settings_doc`"
    assert DOC.read_text() == render(), (
        "docs/configuration.md is stale: run `python -m editloop.settings_doc`"
    )


def test_every_setting_has_a_row_with_its_default_and_description() -> None:
    text = render()
    for name, field in Settings.model_fields.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"{name} has no row: the section parser missed it"
        assert f"`EDITLOOP_{name.upper()}`" in row
        assert field.description and field.description.split("|")[0] in row


def test_check_mode_fails_on_a_stale_file(tmp_path, monkeypatch, capsys) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(render().replace("`8765`", "`8080`"))
    monkeypatch.setattr("editloop.settings_doc.DOC", stale)
    assert main(["--check"]) == 1
    assert "python -m editloop.settings_doc" in capsys.readouterr().err
    assert main([]) == 0 and main(["--check"]) == 0
