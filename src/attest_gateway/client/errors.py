"""What the client raises: the gateway's problem+json answer, or an envelope not opened."""

from __future__ import annotations

from typing import Any


class GatewayProblem(Exception):
    """The gateway answered an error (RFC 9457 problem+json): its status, stable `code`
    (the README's error table), `detail`, and whether a retry may succeed."""

    def __init__(
        self, status: int, code: str, detail: str, *, retryable: bool, body: dict[str, Any]
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.retryable = retryable
        self.body = body


class NotOpened(Exception):
    """An envelope was not opened: its signature did not verify against the signer's
    published keys, or it is sealed to a key the key file does not hold. `code` is the
    gateway's error code for the same refusal (`signature-invalid`, `unknown-key` …)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{detail} ({code})")
        self.code = code
        self.detail = detail
