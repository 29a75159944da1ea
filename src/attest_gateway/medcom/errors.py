"""The error of a Bundle that is not a valid MedCom-like message."""

from __future__ import annotations

from typing import Final

from attest_gateway.core.errors import ErrorCode, InvalidInput

BUNDLE_ERROR_CODES: Final = frozenset(
    {
        ErrorCode.INVALID_BUNDLE,
        ErrorCode.INVALID_ID,
        ErrorCode.BUNDLE_NOT_MESSAGE,
        ErrorCode.MISSING_MESSAGE_HEADER,
        ErrorCode.UNKNOWN_EVENT_CODE,
        ErrorCode.MISSING_PROVENANCE,
        ErrorCode.MISSING_ORGANIZATION,
        ErrorCode.MISSING_IDENTIFIER,
        ErrorCode.MISSING_COMMUNICATION,
        ErrorCode.MISSING_PATIENT,
        ErrorCode.MISSING_RESPONSE,
        ErrorCode.MISSING_OPERATION_OUTCOME,
        ErrorCode.TOO_DEEPLY_NESTED,
    }
)


class BundleError(InvalidInput, ValueError):
    """A Bundle that is not a valid MedCom-like message: an input error of the gateway's
    tree, and a ValueError for pydantic validators and callers that catch one.

    ``code`` is stable (one of :data:`BUNDLE_ERROR_CODES` or
    :data:`~attest_gateway.medcom.rules.ATTACHMENT_ERROR_CODES`); ``detail`` names locations
    and error types only, never input values.
    """
