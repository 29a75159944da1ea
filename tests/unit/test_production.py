"""Production mode refuses unsafe settings with one sentence per setting, naming it."""

from __future__ import annotations

import base64
import datetime as dt
import random
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from attest_gateway.config import Settings, custodial_keys_dir, load_settings, pseudonym_key_file
from attest_gateway.contracts.envelope import Suite
from attest_gateway.crypto.sealing import OrgKeys, PrivateHpkeKey
from attest_gateway.devtools import devca
from attest_gateway.entrypoints.http.app import create_app
from attest_gateway.production import (
    UnsafeSettings,
    inspect_settings,
    is_development_certificate,
    refuse_unsafe_settings,
)
from tests.support.keystore import FakeToken

SECRET = "3b9f0c2a7e5d4c1b8a6f9e0d2c4b6a8f"  # 32 random-looking characters


def _cert(path: Path, *, org: str = "Region Hovedstaden", days: int = 365, start: int = -1) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, "api")])  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=start))
        .not_valid_after(now + dt.timedelta(days=start + days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = path.with_suffix(".key")
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return path


def _file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def _safe(tmp_path: Path, **overrides: Any) -> Settings:
    cert = _cert(tmp_path / "api.crt")
    ca = _cert(tmp_path / "ca.crt")
    values: dict[str, Any] = {
        "environment": "production",
        "var_dir": tmp_path / "var",
        "database_url": "postgresql+asyncpg://attest:pw@db.internal/attest?ssl=verify-full",
        "kafka_bootstrap_servers": "kafka-1:9093,kafka-2:9093,kafka-3:9093",
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": ca,
        "kafka_idempotent_producer": True,
        "kafka_replication_factor": 3,
        "api_tls_certfile": cert,
        "api_tls_keyfile": cert.with_suffix(".key"),
        "metrics_token": SECRET[::-1],
        # the token that holds the private keys (its library need not load: the check reads
        # the settings and the key files, opening the token is the start's)
        "pkcs11_module": _file(tmp_path / "libtoken.so", "not a library"),
        "pkcs11_pin_file": _file(tmp_path / "pin", "1234"),
    }
    values.update(overrides)
    return load_settings(**values)


def _problems(settings: Settings) -> list[str]:
    return inspect_settings(settings).problems


def test_development_mode_refuses_nothing() -> None:
    assert inspect_settings(load_settings()).problems == []
    assert refuse_unsafe_settings(load_settings()) == []


def test_a_safe_production_configuration_is_accepted(tmp_path: Path) -> None:
    findings = inspect_settings(_safe(tmp_path))
    assert findings.problems == []
    assert findings.warnings == []


def test_the_defaults_are_refused_in_production_naming_every_setting() -> None:
    problems = _problems(load_settings(environment="production"))
    text = " ".join(problems)
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "API_TLS_CERTFILE", "PSEUDONYM_KEY",
                "METRICS_TOKEN", "PKCS11_MODULE"):  # fmt: skip
        assert var in text
    assert all(p.endswith(".") and p.count(". ") <= 1 for p in problems)  # one sentence each


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ({"kafka_bootstrap_servers": None}, "KAFKA_BOOTSTRAP_SERVERS"),  # the embedded broker
        ({"kafka_security_protocol": "PLAINTEXT"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"database_url": None}, "DATABASE_URL"),  # SQLite
        ({"database_url": "sqlite+aiosqlite:///gw.db"}, "DATABASE_URL"),
        ({"database_url": "postgresql+asyncpg://a:b@db/attest"}, "DATABASE_URL"),  # no TLS
        # TLS that does not check the server's certificate, or none
        ({"database_url": "postgresql+asyncpg://a:b@db/attest?ssl=require"}, "DATABASE_URL"),
        ({"database_url": "postgresql+asyncpg://a:b@db/attest?sslmode=require"}, "DATABASE_URL"),
        ({"database_url": "postgresql+asyncpg://a:b@db/attest?ssl=prefer"}, "DATABASE_URL"),
        ({"database_url": "postgresql+asyncpg://a:b@db/attest?ssl=allow"}, "DATABASE_URL"),
        ({"database_url": "postgresql+asyncpg://a:b@db/attest?ssl=disable"}, "DATABASE_URL"),
        (
            {"database_url": "postgresql+asyncpg://a:b@db/x?ssl=verify-full&sslmode=require"},
            "DATABASE_URL",
        ),
        ({"database_url": "postgresql+asyncpg://a:b@/attest?host=db.internal"}, "DATABASE_URL"),
        ({"api_tls_certfile": None}, "API_TLS_CERTFILE"),
        ({"api_tls_keyfile": None}, "API_TLS_KEYFILE"),
        ({"pkcs11_module": None, "pseudonym_key": SECRET}, "PKCS11_MODULE"),  # clear files
        ({"pkcs11_module": Path("/nonexistent/libsofthsm2.so")}, "PKCS11_MODULE"),
        ({"pkcs11_pin_file": None}, "PKCS11_PIN_FILE"),
        ({"pkcs11_pin_file": Path("/nonexistent/pin")}, "PKCS11_PIN_FILE"),
        ({"pseudonym_key": "change-me-change-me-change-me-change-me"}, "PSEUDONYM_KEY"),
        ({"pseudonym_key": "a1b2c3d4e5f6"}, "PSEUDONYM_KEY"),  # too short
        ({"pseudonym_key": "abcdefgh" * 4}, "PSEUDONYM_KEY"),  # repeats itself
        ({"pseudonym_key": "Tr0ub4dor&3Tr0ub4dor&3Tr0ub4dor&"}, "PSEUDONYM_KEY"),  # again
        ({"metrics_token": "0123456789abcdef" * 2}, "METRICS_TOKEN"),
        ({"metrics_token": "abcdefghijklmnopqrstuvwxyz012345"}, "METRICS_TOKEN"),  # a run
        ({"metrics_token": "zyxwvutsrqponmlkjihgfedcba987654"}, "METRICS_TOKEN"),
        ({"pseudonym_key": "aaaaaaaaaaaaaaaaaaaaaaaabcdefghi"}, "PSEUDONYM_KEY"),
        ({"pseudonym_key": "kkzkkkkkkkktkkpbkqfmkkkhkdkxwkrk"}, "PSEUDONYM_KEY"),  # 73 bits
        ({"metrics_token": None}, "METRICS_TOKEN"),
        ({"kafka_ssl_cafile": Path("/nonexistent/ca.crt")}, "KAFKA_SSL_CAFILE"),
        ({"kafka_ssl_keyfile": Path("/nonexistent/client.key")}, "KAFKA_SSL_KEYFILE"),
    ],
)
def test_each_unsafe_setting_is_refused_by_name(
    tmp_path: Path, override: dict[str, Any], setting: str
) -> None:
    problems = _problems(_safe(tmp_path, **override))
    assert problems, f"{setting} was accepted"
    assert all(p.startswith(setting) for p in problems), problems


def test_a_unix_socket_database_needs_no_tls(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://attest@/attest?host=/var/run/postgresql"
    assert _problems(_safe(tmp_path, database_url=url)) == []


@pytest.mark.parametrize("query", ["ssl=verify-full", "ssl=verify-ca", "ssl=verify-full&x=1"])
def test_a_database_connection_that_checks_the_certificate_is_accepted(
    tmp_path: Path, query: str
) -> None:
    url = f"postgresql+asyncpg://attest:pw@db.internal/attest?{query}"
    assert _problems(_safe(tmp_path, database_url=url)) == []


def test_tls_without_a_certificate_check_is_refused_in_one_sentence(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://attest:pw@db.internal/attest?ssl=require"
    assert _problems(_safe(tmp_path, database_url=url)) == [
        "DATABASE_URL asks for ssl=require, which does not check the database server's "
        "certificate: use ?ssl=verify-full (with PGSSLROOTCERT naming its CA)."
    ]


def test_libpq_sslmode_is_refused_as_asyncpg_does_not_take_it(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://attest:pw@db.internal/attest?sslmode=verify-full"
    assert _problems(_safe(tmp_path, database_url=url)) == [
        "DATABASE_URL sets sslmode=, which asyncpg does not take (it fails to connect): use "
        "?ssl=verify-full (with PGSSLROOTCERT naming the database server's CA)."
    ]


def test_random_secrets_of_the_usual_kinds_are_accepted(tmp_path: Path) -> None:
    """`openssl rand -hex 32`, `-hex 16` and `-base64 32` shapes (seeded, so the same each run):
    none is taken for a guessable one."""
    rng = random.Random(22)
    made = [rng.randbytes(32).hex() for _ in range(300)]
    made += [rng.randbytes(16).hex() for _ in range(300)]
    made += [base64.b64encode(rng.randbytes(32)).decode() for _ in range(300)]
    base = _safe(tmp_path)
    for secret in made:
        settings = base.model_copy(
            update={"pseudonym_key": SecretStr(secret), "metrics_token": SecretStr(secret)}
        )
        assert not [p for p in _problems(settings) if "is not random" in p], secret


def _token_keys(token: FakeToken, org_id: str, suite: Suite) -> OrgKeys:
    return OrgKeys(org_id, [PrivateHpkeKey.generate(suite)], [token.new_signing_key()])


def _key_files(settings: Settings) -> dict[str, Path]:
    """The private keys the gateway holds, written as `setup` and `keys` write them."""
    custodial = custodial_keys_dir(settings)
    token = FakeToken()
    own = custodial / f"{settings.gateway_org_id}.json"
    _token_keys(token, settings.gateway_org_id, settings.hpke_suite).save(own, token)
    job_centre = custodial / "jc-koebenhavn.json"
    _token_keys(token, "jc-koebenhavn", settings.hpke_suite).save(job_centre, token)
    pseudonym = pseudonym_key_file(settings)
    pseudonym.write_text(token.wrap(SECRET.encode(), context="pseudonym"), encoding="ascii")
    pseudonym.chmod(0o600)
    return {"own": own, "custodial": job_centre, "pseudonym": pseudonym}


def test_private_key_files_as_written_are_accepted(tmp_path: Path) -> None:
    settings = _safe(tmp_path)
    files = _key_files(settings)
    assert {stat.S_IMODE(p.stat().st_mode) for p in files.values()} == {0o600}
    assert _problems(settings) == []


@pytest.mark.parametrize("which", ["own", "custodial", "pseudonym"])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660, 0o666], ids=oct)
def test_a_private_key_file_others_can_open_is_refused(
    tmp_path: Path, which: str, mode: int
) -> None:
    """The gateway's own key file and a custodial job centre's open every reply sealed to
    them; the pseudonym key links case refs to CPR numbers. Not even a group may read them."""
    settings = _safe(tmp_path)
    path = _key_files(settings)[which]
    path.chmod(mode)
    assert _problems(settings) == [
        f"KEYS_DIR holds the private key file {path} with mode {mode:o}, which users other "
        f"than its owner can open: chmod 600 {path}."
    ]


def test_development_and_expired_certificates_are_refused(tmp_path: Path) -> None:
    dev = _cert(tmp_path / "dev.crt", org="attest gateway development CA")
    assert is_development_certificate(x509.load_pem_x509_certificate(dev.read_bytes()))
    problems = _problems(_safe(tmp_path, api_tls_certfile=dev))
    assert problems == [f"API_TLS_CERTFILE names a development certificate ({dev}): use the "
                        "real one."]  # fmt: skip
    old = _cert(tmp_path / "old.crt", days=30, start=-60)
    assert "expired" in _problems(_safe(tmp_path, kafka_ssl_cafile=old))[0]
    future = _cert(tmp_path / "future.crt", start=10)
    assert "not valid before" in _problems(_safe(tmp_path, kafka_ssl_cafile=future))[0]


def test_the_development_ca_is_refused_as_client_ca(tmp_path: Path) -> None:
    ca = devca.ensure_ca(tmp_path / "tls")
    server = devca.issue_server_certificate(ca)
    assert _problems(_safe(tmp_path, api_tls_client_cafile=ca.cert)) == [
        f"API_TLS_CLIENT_CAFILE names a development certificate ({ca.cert}): use the real one."
    ]
    assert is_development_certificate(x509.load_pem_x509_certificate(server.cert.read_bytes()))
    real = _cert(tmp_path / "real-ca.crt")
    assert _problems(_safe(tmp_path, api_tls_client_cafile=real)) == []


def test_a_private_key_others_can_read_is_refused(tmp_path: Path) -> None:
    settings = _safe(tmp_path)
    assert settings.api_tls_keyfile is not None
    settings.api_tls_keyfile.chmod(0o644)
    assert _problems(settings) == [
        f"API_TLS_KEYFILE names {settings.api_tls_keyfile}, which other users can read: "
        "chmod 600 (or 640 for a group)."
    ]


def test_development_keys_and_demo_credentials_are_refused(tmp_path: Path) -> None:
    settings = _safe(tmp_path)
    (settings.var_dir / "keys" / "clients").mkdir(parents=True)
    (settings.var_dir / "keys" / "clients" / "psyk-kbh.json").write_text("{}")
    (settings.var_dir / "demo-credentials.json").write_text("{}")
    problems = _problems(settings)
    assert [p.split(" ")[0] for p in problems] == ["VAR_DIR", "KEYS_DIR"]


def test_the_simulated_clock_is_refused_in_production(tmp_path: Path) -> None:
    """The simulator's clock runs days ahead of the machine's: never in production, and the
    refusal says which setting to unset; development takes it."""
    start = {"simulated_clock_start": "2026-01-05T08:00:00+00:00", "simulated_clock_speed": 50}
    problems = _problems(_safe(tmp_path, **start))
    assert problems == [
        "SIMULATED_CLOCK_START is set: the simulated clock is for the simulator in development; "
        "production runs on the machine's clock (unset it)."
    ]
    with pytest.raises(UnsafeSettings, match="SIMULATED_CLOCK_START"):
        refuse_unsafe_settings(_safe(tmp_path, **start))
    assert _problems(load_settings(**start)) == []  # development


def test_unwise_settings_are_warnings(tmp_path: Path) -> None:
    findings = inspect_settings(
        _safe(tmp_path, kafka_replication_factor=1, kafka_idempotent_producer=False)
    )
    assert findings.problems == []
    assert [w.split(" ")[0] for w in findings.warnings] == [
        "KAFKA_REPLICATION_FACTOR",
        "KAFKA_IDEMPOTENT_PRODUCER",
    ]


def test_the_composition_root_refuses_to_build_the_app() -> None:
    with pytest.raises(UnsafeSettings) as caught:
        create_app(load_settings(environment="production"), "kafka:9093")
    assert "KAFKA_BOOTSTRAP_SERVERS" in str(caught.value)


def test_webhooks_refuse_the_development_ca_and_client_certificate(tmp_path: Path) -> None:
    ca = devca.ensure_ca(tmp_path / "tls")
    client = devca.issue_client_certificate(ca, "gateway")
    assert _problems(_safe(tmp_path, webhook_ca_file=ca.cert, webhook_client_cert=client.cert)) == [
        f"WEBHOOK_CA_FILE names a development certificate ({ca.cert}): use the real one.",
        f"WEBHOOK_CLIENT_CERT names a development certificate ({client.cert}): use the real one.",
    ]
    real = _cert(tmp_path / "real-ca.crt")
    assert _problems(_safe(tmp_path, webhook_ca_file=real)) == []


@pytest.mark.parametrize("which", ["own", "custodial", "pseudonym"])
def test_private_keys_in_clear_on_disk_are_refused_naming_the_file_and_the_fix(
    tmp_path: Path, which: str
) -> None:
    """Production keeps private keys in the token: a key file written in clear (before the
    token was configured) is refused, with the keys it holds and the command that moves
    them into the token."""
    settings = _safe(tmp_path)
    path = _key_files(settings)[which]
    if which == "pseudonym":
        path.write_text(SECRET, encoding="ascii")
        held = path.name
    else:
        clear = OrgKeys.generate(path.stem, settings.hpke_suite)
        clear.save(path)
        held = ", ".join([clear.current_hpke.key_id, clear.current_signing.key_id])
    assert _problems(settings) == [
        f"KEYS_DIR holds private keys in clear in {path} ({held}): move them into the token "
        "(PKCS11_MODULE) with attest-gateway keys protect."
    ]


def test_without_a_token_production_names_the_setting(tmp_path: Path) -> None:
    problems = _problems(_safe(tmp_path, pkcs11_module=None, pseudonym_key=SECRET))
    assert problems == [
        "PKCS11_MODULE is not set: production keeps the private keys in a PKCS#11 token (the "
        "signing keys in it, the HPKE keys and the pseudonym key wrapped by its key-encryption "
        "key), never in clear key files; see docs/keys.md."
    ]


def test_a_pseudonym_key_in_the_environment_beside_a_token_is_a_warning(tmp_path: Path) -> None:
    findings = inspect_settings(_safe(tmp_path, pseudonym_key=SECRET))
    assert findings.problems == []
    assert [w.split(" ")[0] for w in findings.warnings] == ["PSEUDONYM_KEY"]
