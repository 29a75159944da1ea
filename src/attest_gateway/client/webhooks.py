"""Verify a webhook delivery the way the gateway signs it (Standard Webhooks, with the
`standardwebhooks` library the gateway signs with): HMAC-SHA256 of
`<webhook-id>.<webhook-timestamp>.<body>` under the endpoint's `whsec_…` secret, a timestamp
within five minutes of now. During a rotation a delivery carries both signatures; either
secret verifies it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class WebhookInvalid(Exception):
    """The delivery's signature or timestamp does not verify: do not act on it."""


def verify_webhook(headers: Mapping[str, str], body: bytes | str, secret: str) -> Any:
    """The delivery's JSON payload, once its `webhook-signature` verifies under `secret` and
    its `webhook-timestamp` is recent; otherwise `WebhookInvalid`. Pass the body's bytes as
    received (not re-serialised JSON)."""
    try:
        return Webhook(secret).verify(body, dict(headers))
    except (WebhookVerificationError, ValueError) as exc:
        raise WebhookInvalid(str(exc) or "the webhook does not verify") from None
