"""The one exception tree of ext-authz.

Every error carries a stable snake_case ``code``: it labels decision logs, spans and metrics, and
appears in deny bodies and ``WWW-Authenticate``. Messages say what went wrong and how to fix it;
they never contain a credential; ``describe_error`` says what failed without quoting a message
that could hold one.

    ExtAuthzError
    ├── ConfigError                 bad settings file; at start the CLI exits 2
    │   └── PolicyLoadError         bad Casbin model or policy file
    ├── StartupError                a demo component did not start or answer its health check
    ├── KeysUnavailableError        503 keys_unavailable: an issuer's keys are missing or stale
    ├── IntrospectionUnavailableError  503 introspection_unavailable: no usable answer from the
    │                                  introspection endpoint (down, slow, refused our client)
    ├── RateLimitUnavailableError   503 rate_limit_unavailable: the shared rate-limit store
    │                               (Redis) did not answer and the limits fail closed
    ├── InvalidRequestError         400 invalid_request: a request we cannot interpret unambiguously
    ├── AuthenticationError         401 + WWW-Authenticate
    │   ├── MissingCredentialError  missing_credential (only where a credential is required)
    │   ├── InvalidTokenError       invalid_token
    │   │   ├── ExpiredTokenError   expired_token
    │   │   └── RevokedTokenError   revoked_token (jti or subject on the denylist)
    │   ├── InvalidApiKeyError      invalid_api_key
    │   └── InvalidClientCertificateError  invalid_client_certificate
    ├── AccessDeniedError           403 access_denied
    └── LimitedError                429 (+ Retry-After) or 403 by configuration: a guard refused
        ├── BlockedError            blocked: the address or subject is blocked for a while
        └── RateLimitedError        rate_limited: over a rate limit (+ RateLimit headers)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ext_authz.models import Quota

__all__ = [
    "AccessDeniedError",
    "AuthenticationError",
    "BlockedError",
    "ConfigError",
    "ExpiredTokenError",
    "ExtAuthzError",
    "InvalidRequestError",
    "InvalidApiKeyError",
    "InvalidClientCertificateError",
    "InvalidTokenError",
    "IntrospectionUnavailableError",
    "KeysUnavailableError",
    "LimitedError",
    "MissingCredentialError",
    "PolicyLoadError",
    "RateLimitUnavailableError",
    "RateLimitedError",
    "RevokedTokenError",
    "StartupError",
    "describe_error",
]


class ExtAuthzError(Exception):
    """Base of every error ext-authz raises on purpose."""

    code = "internal_error"


class ConfigError(ExtAuthzError):
    """Raised when a settings file is missing, unreadable or invalid; names the file and key."""

    code = "config_error"


class PolicyLoadError(ConfigError):
    """Raised when a Casbin model or policy file cannot be loaded; names the file and line."""

    code = "policy_error"


class StartupError(ExtAuthzError):
    """Raised when a process the demo starts exits early or never becomes healthy."""

    code = "startup_error"


class InvalidRequestError(ExtAuthzError):
    """Raised when a request is ambiguous (encoded slash, dot segment, NUL...) and is refused."""

    code = "invalid_request"


class AuthenticationError(ExtAuthzError):
    """Raised when credentials are missing where required, or present but not valid."""

    code = "invalid_token"


class MissingCredentialError(AuthenticationError):
    """Raised when a credential is required and none was sent."""

    code = "missing_credential"


class InvalidTokenError(AuthenticationError):
    """Raised when a token is malformed, badly signed, or fails a claim check."""

    code = "invalid_token"


class ExpiredTokenError(InvalidTokenError):
    """Raised when a token's ``exp`` has passed (beyond the allowed clock skew)."""

    code = "expired_token"


class RevokedTokenError(InvalidTokenError):
    """Raised when a token's ``jti`` or subject is on the denylist."""

    code = "revoked_token"


class InvalidApiKeyError(AuthenticationError):
    """Raised when an API key is unknown or expired."""

    code = "invalid_api_key"


class InvalidClientCertificateError(AuthenticationError):
    """Raised when a verified client certificate's identity cannot be used as a subject."""

    code = "invalid_client_certificate"


class KeysUnavailableError(ExtAuthzError):
    """Raised when an issuer's keys were never loaded or are older than the maximum staleness:
    tokens from it are refused (503) rather than checked against keys that may be revoked."""

    code = "keys_unavailable"


class IntrospectionUnavailableError(ExtAuthzError):
    """Raised when the introspection endpoint gives no usable answer: opaque tokens are refused
    (503), never allowed, and the client is not blamed with a 401 for the provider's outage."""

    code = "introspection_unavailable"


class LimitedError(ExtAuthzError):
    """Raised by a guard (rate limit, block) before authorization; carries ``retry_after``
    seconds and whether to answer 429 (default) or 403."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int, forbid: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.forbid = forbid


class BlockedError(LimitedError):
    """Raised when the caller's address or subject is blocked after a security event."""

    code = "blocked"


class RateLimitedError(LimitedError):
    """Raised when a request is over the rate limit that applies to it; ``quota`` says which
    limit, for the RateLimit response headers."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int, quota: Quota) -> None:
        super().__init__(message, retry_after)
        self.quota = quota


class RateLimitUnavailableError(ExtAuthzError):
    """Raised when the shared rate-limit store cannot answer and the limits fail closed: the
    request is refused (503), never let through uncounted."""

    code = "rate_limit_unavailable"


class AccessDeniedError(ExtAuthzError):
    """Raised when the identity is known but no policy rule allows the request."""

    code = "access_denied"


def describe_error(error: BaseException) -> str:
    """``error`` for a log line or a wrapping message: the message of our own errors and of
    OSError and ValueError (which name what failed), only the type of anything else, whose
    message could hold anything (a token, a secret, a response body)."""
    if isinstance(error, ExtAuthzError | OSError | ValueError):
        return str(error)
    return f"unexpected {type(error).__name__}"
