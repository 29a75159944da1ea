"""Production mode refuses unsafe settings before anything starts.

With `ENVIRONMENT=production` the gateway will not start on the conveniences of the embedded
setup: the embedded broker, SQLite, plain-text Kafka or HTTP, a database connection that does
not check the server's certificate, a missing, placeholder or guessable pseudonym key or
metrics token, the simulator's clock, development certificates, private keys in clear on disk
(production keeps them in a PKCS#11 token, PKCS11_MODULE: the signing keys in it, the HPKE
keys and the pseudonym key wrapped by its key-encryption key; see docs/keys.md), key files that
users other than their owner can open (the gateway's own and the custodial job centres', which
open every reply to them, and the pseudonym key), or development keys lying about (demo
credentials, clinics' private keys). Each problem is one sentence that names the environment
variable to change; all of them are reported at once.
Some settings are allowed but unwise (one Kafka replica, no idempotent producer): those are
warnings, logged at start.

A development certificate is one whose subject or issuer carries "development" in its
organisation or organisational unit (the local CA that `make run` makes is marked so).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

from attest_gateway.config import (
    Settings,
    custodial_keys_dir,
    pseudonym_key_file,
    staged_key_file,
)
from attest_gateway.core.clock import SystemClock

DEVELOPMENT_MARKER = "development"
_PLACEHOLDERS = ("change", "example", "placeholder", "secret", "xxx", "todo", "replace")
#: The libpq/asyncpg modes that check the server's certificate; `require` only encrypts, so a
#: machine in the middle can pose as the database.
_VERIFYING_SSL_MODES = {"verify-ca", "verify-full"}
MIN_SECRET_CHARS = 32
#: The least a secret's characters must carry: its length times the Shannon entropy of their
#: frequencies. 32 random hex characters (`openssl rand -hex 16`) score about 116 bits and fall
#: under 90 a few times in a million; `openssl rand -hex 32` scores over 200.
MIN_SECRET_BITS = 90
#: A secret repeats itself when it equals itself shifted, over at least this many characters
#: (`abcdefgh` four times, shifted by 8: over 24); a random hex secret does by chance about once
#: in 16^8.
MIN_REPEATED_CHARS = 8


class UnsafeSettings(Exception):
    """Production mode found settings it will not run with."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(" ".join(problems))


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def env_name(setting: str) -> str:
    """The environment variable of a setting (no prefix, upper case)."""
    return setting.upper()


def _secret_problem(name: str, value: str | None, what: str) -> str | None:
    var = env_name(name)
    if value is None or not value.strip():
        return f"{var} is not set: production needs {what}."
    lowered = value.lower()
    if any(p in lowered for p in _PLACEHOLDERS) or len(set(value)) < 8:
        return f"{var} looks like a placeholder: set it to a random value (openssl rand -hex 32)."
    if len(value) < MIN_SECRET_CHARS:
        return f"{var} is shorter than {MIN_SECRET_CHARS} characters: use openssl rand -hex 32."
    flaw = _guessable(value)
    if flaw:
        return f"{var} is not random ({flaw}): set it to a random value (openssl rand -hex 32)."
    return None


def _guessable(value: str) -> str | None:
    """What makes a long enough secret with enough distinct characters guessable anyway: a
    repeated block, runs (aaaa, abcd, 4321) or a skewed mix of characters."""
    n = len(value)
    if any(value[shift:] == value[:-shift] for shift in range(1, n - MIN_REPEATED_CHARS + 1)):
        return "it repeats itself"
    steps = sum(abs(ord(a) - ord(b)) <= 1 for a, b in itertools.pairwise(value))
    if steps * 3 > (n - 1) * 2:  # two neighbouring pairs in three; random hex: 3 in 16
        return "it runs through neighbouring characters such as aaaa or abcd"
    counts = Counter(value).values()
    bits = -sum(c * math.log2(c / n) for c in counts)
    if bits < MIN_SECRET_BITS:
        return f"its characters carry {int(bits)} bits, under {MIN_SECRET_BITS}"
    return None


def is_development_certificate(cert: x509.Certificate) -> bool:
    for name in (cert.subject, cert.issuer):
        for oid in (NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME):
            for attribute in name.get_attributes_for_oid(oid):
                if DEVELOPMENT_MARKER in str(attribute.value).lower():
                    return True
    return False


def _certificate_problems(setting: str, path: Path, now: dt.datetime) -> list[str]:
    var = env_name(setting)
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError:
        return [f"{var} names {path}, which cannot be read."]
    except ValueError:
        return [f"{var} names {path}, which holds no PEM certificate."]
    problems = []
    leaf = certs[0]
    if any(is_development_certificate(c) for c in certs):
        problems.append(f"{var} names a development certificate ({path}): use the real one.")
    not_after, not_before = leaf.not_valid_after_utc, leaf.not_valid_before_utc
    if not_after <= now:
        problems.append(f"{var} names a certificate that expired on {not_after:%Y-%m-%d}.")
    elif not_before > now:
        problems.append(
            f"{var} names a certificate that is not valid before {not_before:%Y-%m-%d}."
        )
    return problems


def _private_key_problems(setting: str, path: Path) -> list[str]:
    var = env_name(setting)
    try:
        mode = path.stat().st_mode
        path.read_bytes()
    except OSError:
        return [f"{var} names {path}, which cannot be read."]
    if mode & (stat.S_IRWXO):
        return [f"{var} names {path}, which other users can read: chmod 600 (or 640 for a group)."]
    return []


def _database_problems(settings: Settings) -> list[str]:
    url = settings.effective_database_url
    if settings.database_url is None or url.startswith("sqlite"):
        return ["DATABASE_URL points at SQLite: production needs PostgreSQL "
                "(postgresql+asyncpg://user:password@host/db?ssl=verify-full)."]  # fmt: skip
    parts = urlsplit(url)
    query = {k.lower(): [v.lower() for v in vs] for k, vs in parse_qs(parts.query).items()}
    # asyncpg takes `host` from the query over the URL's; a path there is a Unix socket.
    hosts = query.get("host") or [parts.hostname or ""]
    if all(not h or h.startswith("/") for h in hosts):
        return []
    if parts.scheme.endswith("+asyncpg") and "sslmode" in query:  # libpq's name, not asyncpg's
        return [
            "DATABASE_URL sets sslmode=, which asyncpg does not take (it fails to connect): "
            "use ?ssl=verify-full (with PGSSLROOTCERT naming the database server's CA)."
        ]
    modes = [f"{key}={mode}" for key in ("ssl", "sslmode") for mode in query.get(key, [])]
    if not modes:
        return ["DATABASE_URL does not ask for TLS: add ?ssl=verify-full "
                "(with PGSSLROOTCERT naming the database server's CA)."]  # fmt: skip
    weak = [m for m in modes if m.partition("=")[2] not in _VERIFYING_SSL_MODES]
    if weak:
        return [
            f"DATABASE_URL asks for {weak[0]}, which does not check the database server's "
            "certificate: use ?ssl=verify-full (with PGSSLROOTCERT naming its CA)."
        ]
    return []


def _kafka_problems(settings: Settings, now: dt.datetime) -> list[str]:
    if not settings.kafka_bootstrap_servers:
        return ["KAFKA_BOOTSTRAP_SERVERS is not set, so the embedded broker would start: "
                "production needs Apache Kafka."]  # fmt: skip
    if settings.kafka_security_protocol != "SSL":
        return ["KAFKA_SECURITY_PROTOCOL is PLAINTEXT: production needs SSL (TLS to the brokers)."]
    problems: list[str] = []
    if settings.kafka_ssl_cafile is not None:
        problems += _certificate_problems("kafka_ssl_cafile", settings.kafka_ssl_cafile, now)
    if settings.kafka_ssl_certfile is not None:
        problems += _certificate_problems("kafka_ssl_certfile", settings.kafka_ssl_certfile, now)
    if settings.kafka_ssl_keyfile is not None:
        if settings.kafka_ssl_certfile is None:
            problems.append("KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE.")
        problems += _private_key_problems("kafka_ssl_keyfile", settings.kafka_ssl_keyfile)
    return problems


def _api_tls_problems(settings: Settings, now: dt.datetime) -> list[str]:
    if settings.api_tls_certfile is None:
        return ["API_TLS_CERTFILE is not set: the API would speak plain HTTP."]
    problems = _certificate_problems("api_tls_certfile", settings.api_tls_certfile, now)
    if settings.api_tls_keyfile is None:
        problems.append("API_TLS_KEYFILE is not set: the API needs its certificate's private key.")
    else:
        problems += _private_key_problems("api_tls_keyfile", settings.api_tls_keyfile)
    if settings.api_tls_client_cafile is not None:
        problems += _certificate_problems(
            "api_tls_client_cafile", settings.api_tls_client_cafile, now
        )
    return problems


def _key_file_problems(settings: Settings) -> list[str]:
    """The private keys the gateway holds itself: its own and the custodial job centres' key
    files (whoever reads one opens every reply sealed to that organisation, or signs as the
    gateway) and the generated pseudonym key (links case refs to CPR numbers). Only their
    owner may read or write them, not even a group (mode & 0o077 == 0)."""
    custodial = custodial_keys_dir(settings)
    files = sorted(p for p in custodial.iterdir() if p.is_file()) if custodial.is_dir() else []
    files += [p for p in (pseudonym_key_file(settings), staged_key_file(settings)) if p.exists()]
    problems = []
    for path in files:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:  # gone meanwhile
            continue
        if mode & 0o077:
            problems.append(
                f"KEYS_DIR holds the private key file {path} with mode {mode:o}, which users "
                f"other than its owner can open: chmod 600 {path}."
            )
    return problems


def _token_problems(settings: Settings) -> list[str]:
    """Production keeps private keys in a PKCS#11 token; this checks the settings that reach
    it (opening it is the start's: a wrong PIN or label stops the start with its sentence)."""
    module = settings.pkcs11_module
    if module is None:
        return [
            "PKCS11_MODULE is not set: production keeps the private keys in a PKCS#11 token "
            "(the signing keys in it, the HPKE keys and the pseudonym key wrapped by its key-"
            "encryption key), never in clear key files; see docs/keys.md."
        ]
    problems = []
    if not module.is_file():
        problems.append(f"PKCS11_MODULE names {module}, which is not a file.")
    if settings.pkcs11_pin is None and settings.pkcs11_pin_file is None:
        problems.append("PKCS11_PIN_FILE (or PKCS11_PIN) is not set: the token needs its PIN.")
    elif settings.pkcs11_pin_file is not None:
        problems += _private_key_problems("pkcs11_pin_file", settings.pkcs11_pin_file)
    return problems


#: The fields of a key file's record that hold a private key in clear (crypto/sealing.py writes
#: them without a token), and the start of a secret wrapped by the token's key-encryption key.
_CLEAR_FIELDS = ("ed25519", "x25519", "mlkem768_seed")
_WRAPPED_PREFIX = "pkcs11-aes-gcm:"


def clear_key_records(path: Path) -> list[str]:
    """The ids of the keys a key file holds in clear; a one-line secret file (the pseudonym
    key) in clear is listed by its name. Raises OSError or ValueError when unreadable."""
    text = path.read_text(encoding="utf-8").strip()
    if not text.startswith("{"):
        return [] if text.startswith(_WRAPPED_PREFIX) else [path.name]
    records = json.loads(text).get("keys", [])
    return [str(r.get("key_id")) for r in records if any(f in r for f in _CLEAR_FIELDS)]


def _clear_key_problems(settings: Settings) -> list[str]:
    """Key files that hold private keys in clear (made before the token was configured)."""
    custodial = custodial_keys_dir(settings)
    files = sorted(custodial.glob("*.json")) if custodial.is_dir() else []
    files += [p for p in (pseudonym_key_file(settings), staged_key_file(settings)) if p.exists()]
    problems = []
    for path in files:
        try:
            clear = clear_key_records(path)
        except (OSError, ValueError):
            problems.append(f"KEYS_DIR holds {path}, which cannot be read as a key file.")
            continue
        if clear:
            problems.append(
                f"KEYS_DIR holds private keys in clear in {path} ({', '.join(clear)}): move "
                "them into the token (PKCS11_MODULE) with attest-gateway keys protect."
            )
    return problems


def _development_leftovers(settings: Settings) -> list[str]:
    problems = []
    creds = settings.var_dir / "demo-credentials.json"
    if creds.exists():
        problems.append(f"VAR_DIR holds demo credentials ({creds}): use a fresh VAR_DIR.")
    clients = settings.effective_keys_dir / "clients"
    if clients.exists() and any(clients.iterdir()):
        problems.append(
            f"KEYS_DIR holds other organisations' private keys ({clients}), as the demo "
            "does: the gateway keeps only its own and custodial organisations' keys."
        )
    return problems


def _clock_problems(settings: Settings) -> list[str]:
    if settings.simulated_clock_start is None:
        return []
    return [
        "SIMULATED_CLOCK_START is set: the simulated clock is for the simulator in development; "
        "production runs on the machine's clock (unset it)."
    ]


def inspect_settings(settings: Settings, *, now: dt.datetime | None = None) -> Findings:
    """Everything production mode refuses (problems) or frowns at (warnings)."""
    findings = Findings()
    if settings.environment != "production":
        return findings
    now = now or SystemClock().now()
    findings.problems += _kafka_problems(settings, now)
    findings.problems += _database_problems(settings)
    findings.problems += _api_tls_problems(settings, now)
    findings.problems += _clock_problems(settings)
    pseudonym = settings.pseudonym_key.get_secret_value() if settings.pseudonym_key else None
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    secrets: list[tuple[str, str | None, str]] = [
        ("metrics_token", token, "a bearer token that guards /metrics")
    ]
    # with a token the pseudonym key may rest wrapped by it (PSEUDONYM_KEY unset)
    if pseudonym is not None or settings.pkcs11_module is None:
        secrets.insert(
            0, ("pseudonym_key", pseudonym, "the secret HMAC key for citizens' pseudonyms")
        )
    for name, value, what in secrets:
        problem = _secret_problem(name, value, what)
        if problem:
            findings.problems.append(problem)
    findings.problems += _token_problems(settings)
    findings.problems += _key_file_problems(settings)
    if settings.pkcs11_module is not None:
        findings.problems += _clear_key_problems(settings)
        if pseudonym is not None:
            findings.warnings.append(
                "PSEUDONYM_KEY holds the pseudonym key in clear in the environment: unset it "
                "and keep it wrapped by the token (attest-gateway keys protect moves it there)."
            )
    findings.problems += _development_leftovers(settings)
    for setting in ("webhook_ca_file", "webhook_client_cert"):  # webhooks: no development CA
        path = getattr(settings, setting)
        if path is not None:
            findings.problems += _certificate_problems(setting, path, now)
    if settings.kafka_replication_factor < 3:
        findings.warnings.append(
            f"KAFKA_REPLICATION_FACTOR is {settings.kafka_replication_factor}: a broker loss "
            "loses data; use 3 on a cluster of three or more brokers."
        )
    if settings.kafka_bootstrap_servers and not settings.kafka_idempotent_producer:
        findings.warnings.append(
            "KAFKA_IDEMPOTENT_PRODUCER is false: Apache Kafka supports it; turn it on."
        )
    return findings


def refuse_unsafe_settings(settings: Settings) -> list[str]:
    """Raise `UnsafeSettings` in production when a setting is unsafe; return the warnings."""
    findings = inspect_settings(settings)
    if findings.problems:
        raise UnsafeSettings(findings.problems)
    return findings.warnings
