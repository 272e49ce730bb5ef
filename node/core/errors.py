"""Domain errors.

Core code raises these; the HTTP layer maps each class to a status code in one place
(`node/api/errors.py`) and the CLI maps them to exit codes. Every error carries a short
machine-readable `code` and a human `detail` that says what is wrong and, where it helps,
what to do instead.
"""

from __future__ import annotations


class AtriumError(Exception):
    """Base class of every error the node reports to a user."""

    code = "error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class ConfigError(AtriumError):
    """node.toml, an environment override or a file it names is wrong."""

    code = "config_error"


class InvalidInput(AtriumError):
    """The request or command is malformed or breaks a rule about its content."""

    code = "invalid_input"


class TooLarge(AtriumError):
    """The input is bigger than this node accepts."""

    code = "too_large"


class Unauthenticated(AtriumError):
    """No credentials, or credentials that are wrong, expired or revoked."""

    code = "unauthenticated"


class Forbidden(AtriumError):
    """The caller is known but may not do this."""

    code = "forbidden"


class NotFound(AtriumError):
    """The thing asked for does not exist (or the caller may not know it does)."""

    code = "not_found"


class Conflict(AtriumError):
    """The request clashes with the current state (a name already taken, ...)."""

    code = "conflict"


class RateLimited(AtriumError):
    """Too many requests of this kind; try again later (after `retry_after` seconds, when known)."""

    code = "rate_limited"

    def __init__(self, detail: str, *, code: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(detail, code=code)
        self.retry_after = retry_after


class SchemaOutOfDate(AtriumError):
    """The database schema is older than this version of the node."""

    code = "schema_out_of_date"


class PluginLoadError(AtriumError):
    """An enabled plugin could not be imported or refused to start."""

    code = "plugin_load_error"
