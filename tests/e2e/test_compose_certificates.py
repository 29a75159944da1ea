"""docker-compose.yml's gateway configuration, with certificates from deploy/make-certs.sh
(run as a subprocess), passes every production check."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from attest_gateway.config import Settings, load_settings
from attest_gateway.production import env_name, inspect_settings
from tests.unit.test_compose import ROOT, _compose, _env_example, _interpolate

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_production_mode_accepts_the_compose_configuration(tmp_path: Path) -> None:
    """The stack as configured, with certificates from deploy/make-certs.sh, passes every
    production check (the paths under /run/tls are mapped to the generated files)."""
    certs = tmp_path / "certs"
    subprocess.run(
        ["bash", str(ROOT / "deploy" / "make-certs.sh"), str(certs)],
        check=True,
        capture_output=True,
    )
    secret = hashlib.sha256(b"a secret as openssl rand -hex 32 makes it").hexdigest()
    env = {k: v or secret for k, v in _env_example().items()}
    svc = _compose()["services"]["api"]
    values = {k: _interpolate(str(v), env) for k, v in svc["environment"].items()}
    values = {k: v.replace("/run/tls", str(certs)) for k, v in values.items()}
    values["VAR_DIR"] = str(tmp_path / "var")
    values["KEYS_DIR"] = str(tmp_path / "var" / "keys")
    settings_vars = {env_name(n) for n in Settings.model_fields}
    settings = load_settings(**{k.lower(): v for k, v in values.items() if k in settings_vars})
    findings = inspect_settings(settings)
    assert findings.problems == []
    assert any("KAFKA_REPLICATION_FACTOR" in w for w in findings.warnings)  # one broker
