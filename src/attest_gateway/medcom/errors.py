"""The error of a Bundle that is not a valid MedCom-like message."""

from __future__ import annotations

from typing import Final

BUNDLE_ERROR_CODES: Final = frozenset(
    {
        "invalid-bundle",
        "invalid-id",
        "bundle-not-message",
        "missing-message-header",
        "unknown-event-code",
        "missing-provenance",
        "missing-organization",
        "missing-identifier",
        "missing-communication",
        "missing-patient",
        "missing-response",
        "missing-operation-outcome",
        "too-deeply-nested",
    }
)


class BundleError(ValueError):
    """A Bundle that is not a valid MedCom-like message.

    ``code`` is stable (kebab-case, one of :data:`BUNDLE_ERROR_CODES`); ``detail`` names
    locations and error types only, never input values.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
