"""What SIGHUP reloads: the TLS certificate, the auth file and the recipients file, without dropping a session.

Certificate renewals are routine, so a reload must be cheap and safe, even
in the middle of a renewal that has written the certificate but not yet the
key: the files are read once, into a new ``ssl.SSLContext`` that is checked
and then swapped in whole (only handshakes that start later use it; sessions
under way keep theirs); the live context is never changed, so a half-written
pair cannot leave it without its key.  The new users go into the live
``Accounts``, the new recipients into the live ``Recipients`` (a RCPT
already answered stays answered).  A file that fails to load changes
nothing: the old certificate, users or recipients stay, and one ERROR line
says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from smtpwire_handler import ServerOptions

from . import _authfile, _recipients, _tls

log = logging.getLogger("smtpwire.serve")


@dataclass
class Reloader:
    """Called on SIGHUP; ``options`` (whose TLS context a reload replaces) is ``None`` without ``--tls-cert``.

    ``accounts`` is ``None`` without ``--auth-file``, ``recipients_file`` without ``--recipients``.
    """

    options: ServerOptions | None
    cert: str | None
    key: str | None
    accounts: _authfile.Accounts | None
    auth_file: str | None
    recipients: _recipients.Recipients | None = None
    recipients_file: str | None = None

    def __call__(self) -> None:
        if self.options is None and self.accounts is None and self.recipients_file is None:
            log.info("SIGHUP: nothing to reload (no --tls-cert, no --auth-file, no --recipients)")
        self._certificate()
        self._users()
        self._recipient_list()

    def _certificate(self) -> None:
        if self.options is None or self.cert is None:
            return
        try:
            context, fingerprint = _tls.server_context(self.cert, self.key)
        except _tls.TLSFileError as error:
            log.error("SIGHUP: %s; keeping the certificate loaded before", error)
        else:
            self.options.replace_tls_context(context)
            log.info("SIGHUP: reloaded the TLS certificate %s (SHA-256 fingerprint %s)", self.cert, fingerprint)

    def _users(self) -> None:
        if self.accounts is None or self.auth_file is None:
            return
        try:
            users = _authfile.load(self.auth_file)
        except _authfile.AuthFileError as error:
            log.error("SIGHUP: %s; keeping the %d user(s) loaded before", error, len(self.accounts))
        else:
            self.accounts.replace(users)
            log.info("SIGHUP: reloaded %d user(s) of %s", len(users), self.auth_file)

    def _recipient_list(self) -> None:
        if self.recipients is None or self.recipients_file is None:
            return
        try:
            table = _recipients.load(self.recipients_file)
        except _recipients.RecipientsFileError as error:
            log.error("SIGHUP: %s; keeping the %s loaded before", error, self.recipients.loaded.summary())
        else:
            self.recipients.replace(table)
            log.info("SIGHUP: reloaded %s of %s", table.summary(), self.recipients_file)
