"""Signing a webhook delivery the way the Standard Webhooks specification says: HMAC-SHA256
over `<webhook-id>.<webhook-timestamp>.<body>` with the endpoint's `whsec_…` secret, sent as
`webhook-signature: v1,<base64>`; during a secret's rotation both secrets sign, the
signatures separated by a space, and a receiver holding either verifies.

The `standardwebhooks` library signs, the same one a receiver verifies with (README)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from standardwebhooks.webhooks import Webhook


def signed_headers(
    webhook_id: str, at: dt.datetime, body: bytes, secrets: Sequence[str]
) -> dict[str, str]:
    """The three headers of a delivery sent at `at` (whole seconds)."""
    if not secrets:
        raise ValueError("a delivery is signed with at least one secret")
    text = body.decode("utf-8")
    utc = at.astimezone(dt.UTC)
    signatures = [Webhook(secret).sign(webhook_id, utc, text) for secret in secrets]
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(utc.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
