"""The partner client: what a clinic's or a job centre's integration imports.

    from attest_gateway.client import Client, OrgKeys, verify_webhook

    with Client("https://gateway.example", api_key=key, ca="ca.crt") as gw:
        for item in gw.mailbox().items:
            bundle = gw.open(item.envelope, OrgKeys.load("psyk-kbh.json"))
            gw.submit(acknowledgement(bundle))

It imports only what a partner needs (httpx, cryptography, pydantic, standardwebhooks, the
wire contracts, the envelope's crypto and the MedCom builders), never the gateway's server
stack (SQLAlchemy, aiokafka, FastAPI, uvicorn, the settings): an import-linter contract
(pyproject.toml) and tests/unit/test_client_imports.py hold that, and `attest-client`
(client/cli.py) starts in a fraction of a second (bench/RESULTS.md).
"""

from __future__ import annotations

from attest_gateway.client.envelopes import acknowledgement, attest_reply, open_envelope
from attest_gateway.client.errors import GatewayProblem, NotOpened
from attest_gateway.client.http import AsyncClient, Client
from attest_gateway.client.webhooks import WebhookInvalid, verify_webhook
from attest_gateway.crypto.sealing import OrgKeys
from attest_gateway.medcom.build import PersonName, SegmentAuthor

__all__ = [
    "AsyncClient",
    "Client",
    "GatewayProblem",
    "NotOpened",
    "OrgKeys",
    "PersonName",
    "SegmentAuthor",
    "WebhookInvalid",
    "acknowledgement",
    "attest_reply",
    "open_envelope",
    "verify_webhook",
]
