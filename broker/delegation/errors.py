"""The refusals of the delegation context, in the style of ``broker.errors``.

They live here while ``broker.errors`` is edited elsewhere; ``broker.errors.all_error_types()``
lists them once this module has been imported (start-up must import it).
"""

from __future__ import annotations

from broker.errors import BrokerError


class DelegationTokenInvalidError(BrokerError):
    """Malformed, not signed by this broker, altered, wrong issuer or wrong type."""

    code, http_status, reason = -32080, 401, "DELEGATION_TOKEN_INVALID"
    default_message = (
        "The A2A-Delegation token is not valid: it is malformed, altered, "
        "or not issued by this broker."
    )


class DelegationTokenExpiredError(BrokerError):
    """The token's expiry (``exp``) or the work's deadline (``dl``) has passed."""

    code, http_status, reason = -32081, 401, "DELEGATION_TOKEN_EXPIRED"
    default_message = "The A2A-Delegation token has expired or its deadline has passed."


class DelegationTokenNotYoursError(BrokerError):
    """The token was minted for another agent: its audience is not the authenticated caller."""

    code, http_status, reason = -32082, 403, "DELEGATION_TOKEN_NOT_YOURS"
    default_message = "The A2A-Delegation token was issued to another agent."


class DelegationTokenRevokedError(BrokerError):
    """The token, or the task tree it belongs to, has been revoked (raised by the store check)."""

    code, http_status, reason = -32083, 403, "DELEGATION_TOKEN_REVOKED"
    default_message = "The A2A-Delegation token has been revoked."


class DelegationRequiredError(BrokerError):
    """The caller presented no delegation context and policy does not let it originate work."""

    code, http_status, reason = -32084, 403, "DELEGATION_REQUIRED"
    default_message = (
        "This agent may not originate work; present the A2A-Delegation token you received."
    )
