"""What ``smtpwire serve`` does with mail: a durable Maildir, a sink for testing clients, or standard output."""

from __future__ import annotations

import logging
from pathlib import Path

from smtpwire_handler import AsyncComposite, AsyncMaildirStore, Envelope, Maildir, PrintHandler, Session

from ._authfile import Accounts, AuthFileHandler
from ._logging import JSON_FIELDS
from ._recipients import Recipients, recipient_parts

log = logging.getLogger("smtpwire.serve")


def log_accepted(
    session: Session, envelope: Envelope, size: int, where: str, recipients: list[str] | None = None
) -> None:
    """One line per accepted message (or, in LMTP, per ``recipients`` given: the one just answered).

    ``where`` is ``stored=NAME`` or one word (``discarded``, ``printed``).  The
    values are JSON fields of their own too (see ``JsonFormatter``), so
    nobody parses them out of the message.
    """
    tls = f"{session.tls.version}/{session.tls.cipher}" if session.tls else "none"
    username = session.authenticated.username if session.authenticated else None
    to = list(envelope.rcpt_tos if recipients is None else recipients)
    outcome, _, name = where.partition("=")
    fields: dict[str, object] = {"from": envelope.mail_from, "to": to, "size": size}
    fields |= {"tls": None if session.tls is None else tls, "auth": username, "peer": session.peer_host}
    fields[outcome] = name or True  # "stored": the file; "discarded" or "printed": true
    verdict = envelope.authentication
    checked = ""
    if verdict is not None:  # serve --verify: each method's result, and the folder a quarantine went to
        verified: dict[str, object] = {result.method: result.result for result in verdict.results}
        if verdict.dkim:  # a result per signature
            verified["dkim"] = [result.result for result in verdict.dkim]
        fields["verified"] = verified
        checked = f" {verdict.summary()}" + (f" folder={envelope.folder}" if envelope.folder else "")
        if envelope.folder:
            fields["folder"] = envelope.folder
    log.info(
        "accepted id=%s from=<%s> to=%s size=%d tls=%s%s peer=%s %s%s",
        session.id,
        envelope.mail_from,
        ",".join(f"<{r}>" for r in to),
        size,
        tls,
        "" if username is None else f" auth={username}",
        session.peer_host,
        where,
        checked,
        extra={JSON_FIELDS: fields},
    )


class LoggedMaildirStore(AsyncMaildirStore):
    """``AsyncMaildirStore`` saying each stored message in serve's log line."""

    def stored(self, session: Session, envelope: Envelope, size: int, path: Path) -> None:
        log_accepted(session, envelope, size, f"stored={path.name}")


class MaildirHandler(AuthFileHandler, AsyncComposite):
    """serve's Maildir delivery: the AUTH file's hooks (``AuthFileHandler``) and a ``LoggedMaildirStore``.

    The store is a part, not a second base class: a hook both defined would
    be refused when the handler is made, where inheritance would hide one.
    With ``accounts``, AUTH is checked against them; with ``recipients``,
    RCPT is (a ``RecipientCheck`` part, as in every serve handler).
    """

    def __init__(
        self, maildir: Maildir, hostname: str, accounts: Accounts | None = None, recipients: Recipients | None = None
    ) -> None:
        self.accounts = accounts
        warn_if_open(maildir)
        super().__init__(LoggedMaildirStore(maildir, hostname), *recipient_parts(recipients))


def warn_if_open(maildir: Maildir) -> None:
    """An operator's choice of modes, said out loud rather than undone."""
    for folder in maildir.open_to_others():
        log.warning("%s is open to other users: they can list the messages (each new one is 0600)", folder)


class SinkHandler(AuthFileHandler, AsyncComposite):
    """Accepts and discards every message, like Postfix's smtp-sink; its hooks never wait, so they run inline.

    A composite only for the ``recipients`` check, when there is one.
    """

    def __init__(self, accounts: Accounts | None = None, recipients: Recipients | None = None) -> None:
        self.accounts = accounts
        super().__init__(*recipient_parts(recipients))

    def data_chunk(self, session: Session, data: bytes) -> None:
        """Drop it (``envelope.size`` counts it)."""

    def message(self, session: Session, envelope: Envelope) -> None:
        log_accepted(session, envelope, envelope.size, "discarded")


class PrintingHandler(AuthFileHandler, AsyncComposite):
    """``--print``: each message on standard output, as ``python -m aiosmtpd``'s debugging handler shows it.

    It holds a ``PrintHandler`` rather than inheriting one: either order of
    the two bases would hide the other's hooks.  A composite only for the
    ``recipients`` check, when there is one.
    """

    def __init__(self, accounts: Accounts | None = None, recipients: Recipients | None = None) -> None:
        self.accounts = accounts
        self.printer = PrintHandler()
        super().__init__(*recipient_parts(recipients))

    def message(self, session: Session, envelope: Envelope) -> None:
        self.printer.message(session, envelope)
        log_accepted(session, envelope, envelope.size, "printed")
