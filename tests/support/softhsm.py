"""A SoftHSM2 token for the tests (Debian's `softhsm2`): a temporary token directory and
SOFTHSM2_CONF naming it, tokens initialised with `softhsm2-util`.

SoftHSM2 reads SOFTHSM2_CONF when the library is first initialised in a process, so one
configuration serves the whole test session (`session_softhsm`); tests keep apart by their
key ids and key-encryption key labels. Skipped, with the reason, only where the library is
not installed (`make install` and `.ci/run` install it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: Debian's path of SoftHSM2's PKCS#11 library (package libsofthsm2).
MODULE_PATHS = (
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
)
TOKEN_LABEL = "attest-test"
#: A second token, only for refusals (a wrong PIN): PKCS#11 logs in once per process and token.
OTHER_TOKEN_LABEL = "attest-other"
SO_PIN = "5678-so"


@dataclass(frozen=True)
class SoftHsm:
    module: Path
    token_label: str
    pin: str
    conf: Path

    def env(self, kek_label: str | None = None) -> dict[str, str]:
        """The gateway's settings (and SoftHSM2's configuration) for this token."""
        env = {
            "PKCS11_MODULE": str(self.module),
            "PKCS11_TOKEN_LABEL": self.token_label,
            "PKCS11_PIN": self.pin,
            "SOFTHSM2_CONF": str(self.conf),
        }
        if kek_label is not None:
            env["PKCS11_KEK_LABEL"] = kek_label
        return env


def softhsm_module() -> Path | None:
    if shutil.which("softhsm2-util") is None:
        return None
    return next((p for p in MODULE_PATHS if p.exists()), None)


def _init_token(conf: Path, label: str, pin: str) -> None:
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin,
         "--so-pin", SO_PIN],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip


@contextmanager
def session_softhsm(directory: Path) -> Iterator[SoftHsm | None]:
    """Tokens in `directory` and SOFTHSM2_CONF set for this process; None without SoftHSM2."""
    module = softhsm_module()
    if module is None:
        yield None
        return
    tokens = directory / "tokens"
    tokens.mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    pin = secrets.token_hex(8)
    _init_token(conf, TOKEN_LABEL, pin)
    _init_token(conf, OTHER_TOKEN_LABEL, pin)
    before = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        yield SoftHsm(module, TOKEN_LABEL, pin, conf)
    finally:
        if before is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = before
