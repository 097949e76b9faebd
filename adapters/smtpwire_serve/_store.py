"""What ``smtpwire serve`` does with mail: a durable Maildir, or a sink for testing clients."""

from __future__ import annotations

import email.utils
import ipaddress
import logging

import anyio.to_thread

from smtpwire import Reply
from smtpwire_handler import Envelope, MaybeAwaitable, Reject, Session

from ._authfile import Accounts, AuthFileHandler
from ._maildir import Delivery, Maildir, storage_reply

log = logging.getLogger("smtpwire.serve")
_FLUSH_AT = 256 * 1024  # batch small chunks into one write per worker-thread trip


def protocol_name(session: Session, smtputf8: bool) -> str:
    """The ``with`` keyword of RFC 5321 4.4, RFC 3848 and RFC 6531: SMTP, ESMTP, ESMTPSA, UTF8SMTPS, ...

    ``S`` when TLS is active, ``A`` when the client authenticated (AUTH needs EHLO).
    """
    if not session.esmtp:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if session.tls else "") + ("A" if session.authenticated else "")


def address_literal(host: str) -> str:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "unknown"
    return f"[IPv6:{ip.compressed}]" if ip.version == 6 else f"[{ip}]"


def trace_headers(session: Session, envelope: Envelope, hostname: str) -> bytes:
    """Return-Path and a Received header (RFC 5321 4.4) for the top of the stored message."""
    lines = [
        f"Return-Path: <{envelope.mail_from}>",
        f"Received: from {session.helo_name} ({address_literal(session.peer_host)})",
        f"\tby {hostname} (smtpwire) with {protocol_name(session, 'SMTPUTF8' in envelope.mail_params)} id {session.id}",
    ]
    if session.tls:
        lines.append(f"\t(using {session.tls.version} with cipher {session.tls.cipher} ({session.tls.bits} bits))")
    date = email.utils.formatdate(localtime=True)
    if len(envelope.rcpt_tos) == 1:
        lines.append(f"\tfor <{envelope.rcpt_tos[0]}>; {date}")
    else:
        lines[-1] += f"; {date}"
    return ("\r\n".join(lines) + "\r\n").encode()


def log_accepted(session: Session, envelope: Envelope, size: int, where: str) -> None:
    tls = f"{session.tls.version}/{session.tls.cipher}" if session.tls else "none"
    auth = f" auth={session.authenticated.username}" if session.authenticated else ""
    log.info(
        "accepted id=%s from=<%s> to=%s size=%d tls=%s%s peer=%s %s",
        session.id,
        envelope.mail_from,
        ",".join(f"<{r}>" for r in envelope.rcpt_tos),
        size,
        tls,
        auth,
        session.peer_host,
        where,
    )


class MaildirHandler(AuthFileHandler):
    """Streams each message into tmp/ and answers 250 only once it is durably in new/.

    With ``accounts``, AUTH is checked against them (see ``AuthFileHandler``).

    No hook touches the disk on the event loop: every file operation runs in
    a worker thread (``anyio.to_thread``, so asyncio and trio alike), and the
    trips there are few, as each costs more than the work it carries.  Chunks
    are gathered into writes of 256 KiB; a message smaller than that (most
    are) costs one trip, at the end of data, which creates the file in tmp/,
    writes it, fsyncs it, renames it into new/ and waits for an fsync of new/
    that it shares with the deliveries renamed meanwhile (``DirectorySync``).

    Whether DATA is refused at once (451/452 before the client sends the
    message) when the Maildir cannot take a file: that check is a trip of its
    own, one more per message.  Measured with 20 concurrent deliveries of
    1 KB, it costs a fifth of the throughput, so it is made only while the
    store is in doubt: until a delivery has succeeded, and again after a
    storage error, until the next success.  While deliveries succeed, the file
    is created lazily and a Maildir that breaks is first noticed at the end of
    the data (still 451/452, never 250).
    """

    def __init__(self, maildir: Maildir, hostname: str, accounts: Accounts | None = None) -> None:
        self.maildir = maildir
        self.hostname = hostname
        self.accounts = accounts
        self._proven = False  # the last delivery attempt stored its message

    def data_start(self, session: Session) -> MaybeAwaitable[Reply | None]:
        """A plain call while deliveries succeed; while the store is in doubt, a check in a worker thread."""
        assert session.envelope is not None
        delivery = self.maildir.begin()
        session.state["delivery"] = delivery
        session.state["pending"] = [trace_headers(session, session.envelope, self.hostname)]
        session.state["pending_size"] = 0
        return None if self._proven else self._create(session, delivery)

    async def _create(self, session: Session, delivery: Delivery) -> Reply | None:
        try:
            await anyio.to_thread.run_sync(delivery.create)
        except OSError as error:
            log.error("session %s: cannot create a file in %s: %s", session.id, self.maildir.path, error)
            del session.state["delivery"], session.state["pending"]
            return storage_reply(error)
        return None

    def data_chunk(self, session: Session, data: bytes) -> MaybeAwaitable[None]:
        """Gathered in memory (a plain call); every 256 KiB, written in a worker thread."""
        session.state["pending"].append(data)
        session.state["pending_size"] += len(data)
        return self._write(session) if session.state["pending_size"] >= _FLUSH_AT else None

    async def _write(self, session: Session) -> None:
        delivery: Delivery = session.state["delivery"]
        try:
            await anyio.to_thread.run_sync(delivery.write, self._take(session))
        except OSError as error:
            self._proven = False
            log.error("session %s: writing the message failed: %s", session.id, error)
            raise Reject(storage_reply(error)) from error

    async def message(self, session: Session, envelope: Envelope) -> Reply | None:
        delivery: Delivery = session.state.pop("delivery")
        try:
            path = await anyio.to_thread.run_sync(delivery.commit, self._take(session))
        except OSError as error:  # commit() removed the file from tmp/
            self._proven = False
            log.error("session %s: storing the message failed: %s", session.id, error)
            return storage_reply(error)
        self._proven = True
        log_accepted(session, envelope, delivery.size, f"stored={path.name}")
        return None

    def message_aborted(self, session: Session, reply: Reply | None) -> MaybeAwaitable[None]:
        delivery: Delivery | None = session.state.pop("delivery", None)
        session.state.pop("pending", None)
        if delivery is not None and delivery.created:  # else there is nothing on disk
            return anyio.to_thread.run_sync(delivery.abort)
        return None

    @staticmethod
    def _take(session: Session) -> bytes:
        """What arrived since the last write, as one buffer."""
        data = b"".join(session.state["pending"])
        session.state["pending"], session.state["pending_size"] = [], 0
        return data


class SinkHandler(AuthFileHandler):
    """Accepts and discards every message, like Postfix's smtp-sink; its hooks never wait, so they run inline."""

    def __init__(self, accounts: Accounts | None = None) -> None:
        self.accounts = accounts

    def data_chunk(self, session: Session, data: bytes) -> None:
        """Drop it (``envelope.size`` counts it)."""

    def message(self, session: Session, envelope: Envelope) -> None:
        log_accepted(session, envelope, envelope.size, "discarded")
