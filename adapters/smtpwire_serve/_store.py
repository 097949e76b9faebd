"""What ``smtpwire serve`` does with mail: a durable Maildir, a sink for testing clients, or standard output."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from smtpwire_handler import AsyncComposite, AsyncMaildirStore, Envelope, Maildir, PrintHandler, Session

from ._authfile import Accounts, AuthFileHandler
from ._logging import JSON_FIELDS, info_line
from ._recipients import Recipients, recipient_parts

log = logging.getLogger("smtpwire.serve")


def log_accepted(
    session: Session, envelope: Envelope, size: int, where: str, recipients: list[str] | None = None
) -> None:
    """One line per accepted message (or, in LMTP, per ``recipients`` given: the one just answered).

    ``where`` is ``stored=NAME`` or one word (``discarded``, ``printed``).  The
    values are JSON fields of their own too (see ``JsonFormatter``), so
    nobody parses them out of the message; they are gathered only when a
    JSON log asks for them, as this line is written for every message.
    """
    if not log.isEnabledFor(logging.INFO):
        return
    tls = session.tls
    authenticated = session.authenticated
    to = envelope.rcpt_tos if recipients is None else recipients
    verdict = envelope.authentication
    recipients_shown = ",".join([f"<{recipient}>" for recipient in to])
    rest = (
        f"from=<{envelope.mail_from}> to={recipients_shown} size={size}"
        f" tls={'none' if tls is None else f'{tls.version}/{tls.cipher}'}"
        f"{'' if authenticated is None else f' auth={authenticated.username}'}"
        f" peer={session.peer_host} {where}"
    )
    if verdict is not None:
        rest += f" {verdict.summary()}" + (f" folder={envelope.folder}" if envelope.folder else "")
    if not info_line(log, f"accepted id={session.id} {rest}"):
        fields = functools.partial(accepted_fields, session, envelope, size, where, list(to))
        log.info("accepted id=%s %s", session.id, rest, extra={JSON_FIELDS: fields})


def accepted_fields(session: Session, envelope: Envelope, size: int, where: str, to: list[str]) -> dict[str, object]:
    """The accepted line's values as JSON fields: ``stored`` (the file) or ``discarded``/``printed`` (true)."""
    tls = session.tls
    username = session.authenticated.username if session.authenticated else None
    outcome, _, name = where.partition("=")
    fields: dict[str, object] = {"from": envelope.mail_from, "to": to, "size": size}
    fields |= {"tls": None if tls is None else f"{tls.version}/{tls.cipher}", "auth": username}
    fields |= {"peer": session.peer_host, outcome: name or True}
    verdict = envelope.authentication
    if verdict is not None:  # serve --verify: each method's result, and the folder a quarantine went to
        verified: dict[str, object] = {result.method: result.result for result in verdict.results}
        if verdict.dkim:  # a result per signature
            verified["dkim"] = [result.result for result in verdict.dkim]
        fields["verified"] = verified
        if envelope.folder:
            fields["folder"] = envelope.folder
    return fields


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
        self,
        maildir: Maildir,
        hostname: str,
        accounts: Accounts | None = None,
        recipients: Recipients | None = None,
        sync_filesystem: bool | None = None,
    ) -> None:
        self.accounts = accounts
        warn_if_open(maildir)
        store = LoggedMaildirStore(maildir, hostname, sync_filesystem=sync_filesystem)
        super().__init__(store, *recipient_parts(recipients))


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
