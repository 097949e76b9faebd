"""The server's certificate and key: loaded with one clear line for each way the files can be wrong.

``ssl`` says ``[SSL] PEM lib (_ssl.c:3926)`` for a missing key, a key file
without a key and a certificate file without a certificate alike; the files
are checked here first, so the operator reads which file is wrong and how.
Each file is read once, and the context is loaded from those very bytes, so
what was checked is what is loaded even while a renewal rewrites the files.
A live context is never loaded into (a failed ``load_cert_chain`` drops its
key): a reload builds a new context with ``server_context`` and swaps it in
whole (``ServerOptions.replace_tls_context``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import ssl
import tempfile
from collections.abc import Iterator

_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----")
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")
_ENCRYPTED = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED")


class TLSFileError(ValueError):
    """A certificate or key file that cannot serve, with the one line that says why."""


class _Encrypted(Exception):
    """Raised instead of asking for a passphrase: a server has nobody to ask."""


def fingerprint(certificate_pem: bytes) -> str:
    """The SHA-256 fingerprint of the first certificate, as ``openssl x509 -fingerprint -sha256`` shows it."""
    match = _CERTIFICATE.search(certificate_pem)
    if match is None:
        raise TLSFileError("no PEM certificate")
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(match[0].decode("ascii"))).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def server_context(cert: str, key: str | None) -> tuple[ssl.SSLContext, str]:
    """A new server context with ``cert`` and ``key`` (as ``load``), and the certificate's fingerprint."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    return context, load(context, cert, key)


def load(context: ssl.SSLContext, cert: str, key: str | None) -> str:
    """Load ``cert`` (and ``key``, else the key in ``cert``) into ``context``, not yet serving; returns the fingerprint.

    A context that fails to load is left without a usable pair: give it only one that nothing uses yet.
    """
    certificate = _read("--tls-cert", cert)
    if _CERTIFICATE.search(certificate) is None:
        raise TLSFileError(f"--tls-cert {cert} holds no PEM certificate")
    private = certificate if key is None else _read("--tls-key", key)
    if _PRIVATE_KEY.search(private) is None:
        if key is None:
            raise TLSFileError(f"--tls-cert {cert} holds no private key: give it with --tls-key")
        raise TLSFileError(f"--tls-key {key} holds no PEM private key")
    where = f"--tls-key {key}" if key is not None else f"the key in --tls-cert {cert}"
    if _ENCRYPTED.search(private):
        raise TLSFileError(f"{where} is encrypted: give it unencrypted (a server has nobody to ask the passphrase)")
    try:
        with _pem_files(certificate, private) as (certificate_file, key_file):
            context.load_cert_chain(certificate_file, key_file, password=_refuse_passphrase)
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise TLSFileError(f"{where} does not match the certificate in --tls-cert {cert}") from None
        raise TLSFileError(f"cannot load the TLS certificate {cert}: {error.reason or error}") from None
    except (OSError, _Encrypted) as error:
        raise TLSFileError(f"cannot load the TLS certificate {cert}: {error}") from None
    return fingerprint(certificate)


def load_from_memory(context: ssl.SSLContext, certificate_pem: bytes, key_pem: bytes) -> None:
    """Load a pair that exists only in memory (the ``--self-signed`` one): no file outlives the call.

    On Linux the PEM goes through anonymous memory files (``memfd_create``),
    never a directory; elsewhere through a private temporary directory that
    is removed as soon as the pair is loaded.
    """
    with _pem_files(certificate_pem, key_pem) as (cert, key):
        context.load_cert_chain(cert, key)


@contextlib.contextmanager
def _pem_files(certificate_pem: bytes, key_pem: bytes) -> Iterator[tuple[str, str]]:
    if hasattr(os, "memfd_create"):
        descriptors = [os.memfd_create(name) for name in ("cert.pem", "key.pem")]
        try:
            for descriptor, data in zip(descriptors, (certificate_pem, key_pem), strict=True):
                os.write(descriptor, data)
            yield f"/proc/self/fd/{descriptors[0]}", f"/proc/self/fd/{descriptors[1]}"
        finally:
            for descriptor in descriptors:
                os.close(descriptor)
        return
    directory = tempfile.mkdtemp(prefix="smtpwire-tls-")
    try:
        paths = (os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem"))
        for path, data in zip(paths, (certificate_pem, key_pem), strict=True):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
                file.write(data)
        yield paths
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(1 << 20)
    except OSError as error:
        raise TLSFileError(f"cannot read {option} {path}: {error.strerror or error}") from None


def _refuse_passphrase() -> bytes:
    raise _Encrypted("the key is encrypted")
