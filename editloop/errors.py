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


class OptionError(EditloopError):
    """A command-line option out of its range."""

    code = "invalid_option"


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


class BadRequestError(EditloopError):
    code = "invalid_request"


class OverloadedError(EditloopError):
    """More completions queued than the server takes; the client should retry later."""

    code = "overloaded"


class AuthError(EditloopError):
    code = "unauthorized"


class ForbiddenError(EditloopError):
    code = "forbidden"


class ContextRootError(ForbiddenError):
    """A request named a project root outside the server's ``context_roots``."""

    code = "context_root_not_allowed"


class BackendError(EditloopError):
    """A model backend that cannot answer now (a remote server down, timing out or replying nonsense)."""

    code = "backend_unavailable"


class TrainingDataError(EditloopError):
    """Training rows that cannot be used: missing fields, or none left after filtering."""

    code = "invalid_training_data"


class FeedbackError(EditloopError):
    """The feedback log cannot take or give events now (Redis down, misconfigured, not durable)."""

    code = "feedback_unavailable"


class SandboxError(EditloopError):
    """A sandbox asked for something it cannot do (an unknown toolchain, a file path outside it)."""

    code = "sandbox_error"


class SandboxUnavailableError(SandboxError):
    """No sandbox can run here (bubblewrap missing or refused); editloop will not run code unconfined."""

    code = "sandbox_unavailable"


def quoted(text: object, limit: int = 80) -> str:
    """Client text as it may appear in a message or a log line: escaped (a newline cannot forge a
    line) and cut to ``limit`` characters.

    >>> quoted("py\\nINFO forged"), quoted("x" * 100, limit=4)
    ("'py\\\\nINFO forged'", "'xxxx'… (100 chars)")
    """
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} chars)"
