"""Where the gateway's private keys rest: the key store the settings name (clear key files in
development, a PKCS#11 token otherwise), see `open_key_store` and docs/keys.md."""

from __future__ import annotations

from attest_gateway.config import Settings
from attest_gateway.crypto.sealing import CLEAR_FILES, KeyStore, KeyStoreError
from attest_gateway.infra.keys.pkcs11 import open_token

__all__ = ["KeyStoreError", "open_key_store", "token_pin"]


def token_pin(settings: Settings) -> str:
    """The token's user PIN: PKCS11_PIN, else the first line of PKCS11_PIN_FILE."""
    if settings.pkcs11_pin is not None:
        return settings.pkcs11_pin.get_secret_value()
    if settings.pkcs11_pin_file is not None:
        try:
            return settings.pkcs11_pin_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise KeyStoreError(
                f"PKCS11_PIN_FILE names {settings.pkcs11_pin_file}, which cannot be read"
            ) from exc
    raise KeyStoreError("PKCS11_MODULE is set but neither PKCS11_PIN nor PKCS11_PIN_FILE is")


def open_key_store(settings: Settings) -> KeyStore:
    """The configured key store: the token when PKCS11_MODULE is set (one open session per
    process and token), else the clear key files of development."""
    if settings.pkcs11_module is None:
        return CLEAR_FILES
    return open_token(
        settings.pkcs11_module,
        settings.pkcs11_token_label,
        token_pin(settings),
        settings.pkcs11_kek_label,
    )
