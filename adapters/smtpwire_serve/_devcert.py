"""A self-signed certificate for development (``smtpwire serve --self-signed``), never for production.

``serve`` makes the pair in memory (``make_self_signed``) and loads it
without leaving a file behind (see ``_tls.load_from_memory``).
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_self_signed(hostname: str) -> tuple[bytes, bytes]:
    """The certificate and key, PEM (P-256, 30 days, names: hostname, localhost, 127.0.0.1, ::1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    dns = (hostname, "localhost") if not hostname.startswith("[") else ("localhost",)
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(dns)]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "::1")]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def write_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """Write the pair to cert.pem and key.pem in ``directory`` (for tools that want files: the benchmarks)."""
    certificate_pem, key_pem = make_self_signed(hostname)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate_pem)
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)
    return cert_path, key_path
