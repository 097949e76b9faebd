"""Handlers for looking at mail rather than storing it: print each message, or hand it over parsed."""

from __future__ import annotations

import email.policy
import secrets
import sys
import threading
from email.message import EmailMessage
from email.parser import BytesParser
from typing import TextIO

from smtpwire import Reply

from ._escaping import escaped
from ._handler import Handler
from ._session import Envelope, Session

_BEGIN = "---------- MESSAGE FOLLOWS {} ----------"
_END = "------------ END MESSAGE {} ------------"
_PARSER = BytesParser(policy=email.policy.default)  # EmailMessage objects


class PrintHandler(Handler):
    """Prints each message to ``stream`` (default: ``sys.stdout`` at the time), like aiosmtpd's Debugging handler.

    The message as received, decoded as UTF-8 (anything else shown as
    U+FFFD), with ``X-Peer``, ``X-MailFrom`` and ``X-RcptTo`` lines added at
    the end of its header, between two marker lines.  Messages from
    concurrent sessions are printed one at a time, each whole.

    The client cannot take over the terminal or fake a message: controls
    (but tab and newline), Unicode line separators and format characters
    (bidi overrides, invisible ones) are shown as Python escapes (``\\x1b``,
    ``\\r``, ``\\u202e``), as serve's log does; and both marker lines carry a
    random token drawn for this message, which no line of it can know.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._printing = threading.Lock()

    def message(self, session: Session, envelope: Envelope) -> Reply | None:
        text = printed(session, envelope)
        stream = self.stream or sys.stdout
        with self._printing:
            stream.write(text)
            stream.flush()
        return None


def printed(session: Session, envelope: Envelope) -> str:
    """The message as ``PrintHandler`` prints it."""
    text = bytes(envelope.content).decode("utf-8", "replace").replace("\r\n", "\n")
    lines = escaped(text, keep="\t\n").split("\n")
    if lines[-1] == "":  # what follows the last line's end
        lines.pop()
    added = [
        f"X-Peer: {session.peer_host}",
        f"X-MailFrom: {envelope.mail_from}",
        f"X-RcptTo: {', '.join(envelope.rcpt_tos)}",
    ]
    end_of_header = lines.index("") if "" in lines else len(lines)
    lines[end_of_header:end_of_header] = [escaped(line) for line in added]
    token = secrets.token_hex(8)
    return "\n".join([_BEGIN.format(token), *lines, _END.format(token), ""])


class EmailHandler(Handler):
    """Hands each message to ``email()`` as an ``email.message.EmailMessage`` (``email.policy.default``).

    Subclass it and override ``email``; its answer is the end of data's (a
    ``Reply``, or ``None`` for 250).  Lines end in ``\n``, as the email
    package expects (``as_bytes(policy=email.policy.SMTP)`` gives CRLF back).
    The message is kept in memory until it is parsed:
    ``ServerConfig.max_message_size`` bounds it.
    """

    def message(self, session: Session, envelope: Envelope) -> Reply | None:
        parsed = _PARSER.parsebytes(bytes(envelope.content).replace(b"\r\n", b"\n"))
        assert isinstance(parsed, EmailMessage)  # what email.policy.default makes
        return self.email(session, envelope, parsed)

    def email(self, session: Session, envelope: Envelope, message: EmailMessage) -> Reply | None:
        """The parsed message: store it, forward it, look at it; the default accepts and drops it."""
        return None
