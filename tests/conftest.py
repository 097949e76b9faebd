"""Fixtures several test modules share."""

from __future__ import annotations

import pathlib

import pytest

from tests import certs


@pytest.fixture
def tls_files(tmp_path: pathlib.Path) -> list[str]:
    """A server certificate and key written to files, as ``smtpwire serve`` options."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf = certs.server_certificate()
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return ["--tls-cert", str(cert), "--tls-key", str(key)]
