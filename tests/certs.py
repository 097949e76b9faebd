"""Test certificates from trustme: one CA, a server certificate for 127.0.0.1/::1/localhost."""

from __future__ import annotations

import functools
import ssl

import trustme


@functools.cache
def authority() -> trustme.CA:
    return trustme.CA()


@functools.cache
def server_certificate() -> trustme.LeafCert:
    return authority().issue_cert("localhost", "127.0.0.1", "::1")


def server_context() -> ssl.SSLContext:
    """What a server would load: its certificate chain and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_certificate().configure_cert(context)
    return context


def client_context() -> ssl.SSLContext:
    """A client that verifies the server against the test CA (hostname 127.0.0.1 or localhost)."""
    context = ssl.create_default_context()
    authority().configure_trust(context)
    return context


def write_ca(directory: str) -> str:
    """The CA certificate as a PEM file, for command-line clients (swaks, openssl)."""
    path = f"{directory}/ca.pem"
    authority().cert_pem.write_to_path(path)
    return path
