"""The installed `attest-gateway` command, run as a subprocess with a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from attest_gateway.config import Settings

CLI = str(Path(sys.executable).with_name("attest-gateway"))


_SETTING_VARS = {name.upper() for name in Settings.model_fields}


def run_cli(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed command with a clean gateway environment plus `env`."""
    base = {k: v for k, v in os.environ.items() if k.upper() not in _SETTING_VARS}
    return subprocess.run(
        [CLI, *args],
        env={**base, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=cwd,
    )
