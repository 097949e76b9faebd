"""What ``smtpwire serve`` does with mail: a durable Maildir, or a sink for testing clients."""

from __future__ import annotations

import email.utils
import ipaddress
import logging

import anyio.to_thread

from smtpwire import Reply
from smtpwire_handler import Envelope, Reject, Session

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
    """

    def __init__(self, maildir: Maildir, hostname: str, accounts: Accounts | None = None) -> None:
        self.maildir = maildir
        self.hostname = hostname
        self.accounts = accounts

    async def data_start(self, session: Session) -> Reply | None:
        assert session.envelope is not None
        try:
            delivery = await anyio.to_thread.run_sync(self.maildir.begin)
        except OSError as error:
            log.error("session %s: cannot create a file in %s: %s", session.id, self.maildir.path, error)
            return storage_reply(error)
        session.state["delivery"] = delivery
        session.state["pending"] = [trace_headers(session, session.envelope, self.hostname)]
        session.state["pending_size"] = 0
        return None

    async def data_chunk(self, session: Session, data: bytes) -> None:
        session.state["pending"].append(data)
        session.state["pending_size"] += len(data)
        if session.state["pending_size"] >= _FLUSH_AT:
            try:
                await self._flush(session, session.state["delivery"])
            except OSError as error:
                log.error("session %s: writing the message failed: %s", session.id, error)
                raise Reject(storage_reply(error)) from error

    async def message(self, session: Session, envelope: Envelope) -> Reply | None:
        delivery: Delivery = session.state.pop("delivery")
        try:
            await self._flush(session, delivery)
            path = await anyio.to_thread.run_sync(delivery.commit)
        except OSError as error:
            log.error("session %s: storing the message failed: %s", session.id, error)
            await anyio.to_thread.run_sync(delivery.abort)
            return storage_reply(error)
        log_accepted(session, envelope, delivery.size, f"stored={path.name}")
        return None

    async def message_aborted(self, session: Session, reply: Reply | None) -> None:
        delivery: Delivery | None = session.state.pop("delivery", None)
        if delivery is not None:
            await anyio.to_thread.run_sync(delivery.abort)

    async def _flush(self, session: Session, delivery: Delivery) -> None:
        data = b"".join(session.state["pending"])
        session.state["pending"], session.state["pending_size"] = [], 0
        await anyio.to_thread.run_sync(delivery.write, data)


class SinkHandler(AuthFileHandler):
    """Accepts and discards every message, like Postfix's smtp-sink."""

    def __init__(self, accounts: Accounts | None = None) -> None:
        self.accounts = accounts

    async def data_start(self, session: Session) -> Reply | None:
        session.state["size"] = 0
        return None

    async def data_chunk(self, session: Session, data: bytes) -> None:
        session.state["size"] += len(data)

    async def message(self, session: Session, envelope: Envelope) -> Reply | None:
        log_accepted(session, envelope, session.state["size"], "discarded")
        return None
