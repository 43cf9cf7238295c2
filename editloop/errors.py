"""The errors editloop raises on purpose, mapped to replies at each boundary.

Every error carries a machine-readable ``code`` (HTTP answers it in JSON, the CLI prints
one line with it) and a message that says what to do about it.
"""


class EditloopError(Exception):
    """Base of every error editloop raises deliberately."""

    code = "editloop_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SettingsError(EditloopError):
    code = "invalid_settings"


class CorpusError(EditloopError):
    code = "invalid_corpus"


class ModelError(EditloopError):
    """A model file or checkpoint that cannot be used."""

    code = "invalid_model"


class ExportError(EditloopError):
    """Export to GGUF failed, or its verification did; nothing was published."""

    code = "export_failed"


class RegistryError(EditloopError):
    code = "registry_error"


class UnknownVersionError(RegistryError):
    code = "unknown_version"


class CorruptVersionError(RegistryError):
    """A version whose files are missing or do not match their manifest."""

    code = "corrupt_version"


class NoFimTokensError(ModelError):
    code = "no_fim_tokens"
