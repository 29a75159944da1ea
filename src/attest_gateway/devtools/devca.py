"""A local development CA and its certificates, so that HTTPS and mutual TLS work out of the
box (`make run`), and tests can put TLS on every hop (the API, a TLS proxy before the broker).

Everything here is marked `development` in the subject's organisation name, which is how
production mode recognises and refuses it (`production.is_development_certificate`). The
certificates use ECDSA P-256 and come from `cryptography`'s x509 builder.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from attest_gateway.core.clock import SystemClock

DEV_CA_NAME = "attest gateway development CA"
DEV_ORGANISATION = "attest gateway development"
_CA_DAYS = 3650
_LEAF_DAYS = 825


@dataclass(frozen=True, slots=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class DevCA:
    """A CA on disk (`ca.crt`, `ca.key` in `directory`) that issues server and client certs."""

    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def key(self) -> Path:
        return self.directory / "ca.key"

    def server(self, name: str = "server") -> CertPair:
        return CertPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")

    def client(self, org_id: str) -> CertPair:
        folder = self.directory / "clients"
        return CertPair(folder / f"{org_id}.crt", folder / f"{org_id}.key")


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner may read (mode 0600), atomically (temp file, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _now() -> dt.datetime:
    return SystemClock().now()


def ensure_ca(directory: Path) -> DevCA:
    """The development CA in `directory`, created on first use."""
    ca = DevCA(directory)
    if ca.cert.exists() and ca.key.exists():
        return ca
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(DEV_CA_NAME, DEV_CA_NAME)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(ca.key, _key_pem(key))
    _write_public(ca.cert, cert.public_bytes(serialization.Encoding.PEM))
    return ca


def _issue(
    ca: DevCA,
    pair: CertPair,
    *,
    common_name: str,
    usage: x509.ObjectIdentifier,
    hosts: tuple[str, ...] = (),
    days: int = _LEAF_DAYS,
) -> CertPair:
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, DEV_ORGANISATION))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    write_private(pair.key, _key_pem(key))
    _write_public(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
    return pair


def issue_server_certificate(
    ca: DevCA,
    name: str = "server",
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    *,
    days: int = _LEAF_DAYS,
) -> CertPair:
    """A TLS server certificate for `hosts` (a new one each call)."""
    return _issue(
        ca,
        ca.server(name),
        common_name=hosts[0] if hosts else name,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        hosts=hosts,
        days=days,
    )


def issue_client_certificate(ca: DevCA, org_id: str, *, days: int = _LEAF_DAYS) -> CertPair:
    """A TLS client certificate for an organisation (CN = its id; a new one each call)."""
    return _issue(
        ca, ca.client(org_id), common_name=org_id, usage=ExtendedKeyUsageOID.CLIENT_AUTH, days=days
    )


def ensure_server_certificate(ca: DevCA, name: str = "server") -> CertPair:
    pair = ca.server(name)
    if pair.cert.exists() and pair.key.exists() and _still_valid(pair.cert):
        return pair
    return issue_server_certificate(ca, name)


def ensure_client_certificate(ca: DevCA, org_id: str) -> CertPair:
    pair = ca.client(org_id)
    if pair.cert.exists() and pair.key.exists() and _still_valid(pair.cert):
        return pair
    return issue_client_certificate(ca, org_id)


def _still_valid(path: Path) -> bool:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.not_valid_after_utc > _now() + dt.timedelta(days=1)


def certificate_fingerprint(pem_or_der: bytes) -> str:
    """SHA-256 of the certificate's DER encoding, hex: how the directory pins a client cert."""
    if pem_or_der.lstrip().startswith(b"-----BEGIN"):
        cert = x509.load_pem_x509_certificate(pem_or_der)
    else:
        cert = x509.load_der_x509_certificate(pem_or_der)
    return cert.fingerprint(hashes.SHA256()).hex()
