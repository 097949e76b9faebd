"""What the server received: each message parsed, raw, with its envelope and session; waiting for them.

The loop thread appends, the test thread reads and waits: one condition
variable guards the list, and ``await`` waiters are woken on their own loop.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import cast, overload

from ._content import Attachment, attachments, first_code, links, verify_dkim
from ._faults import same_address

Predicate = Callable[["ReceivedMessage"], bool]
#: How often ``assert_no_message`` looks again whether the sessions' transactions have ended.
_TRANSACTION_POLL = 0.02


class Recipients(tuple[str, ...]):
    """The envelope recipients: a tuple that also equals the list of the same addresses (as aiosmtpd's does)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return list(self) == other if isinstance(other, list) else tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__


@dataclass(frozen=True)
class SessionInfo:
    """The session a message came in: who greeted, over what TLS, as which user."""

    id: str
    peer: tuple[str, int] | None
    helo_name: str | None
    esmtp: bool
    tls_version: str | None
    tls_cipher: str | None
    implicit_tls: bool
    #: The user name the client authenticated as (``None`` without AUTH), and with which mechanism.
    authenticated_user: str | None
    auth_mechanism: str | None


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as the server acknowledged it with 250."""

    raw: bytes
    mail_from: str
    mail_params: Mapping[str, str | None]
    #: Every accepted RCPT, in order: Bcc recipients are here and nowhere in the headers (equal to a list, too).
    rcpt_tos: Recipients
    rcpt_params: tuple[Mapping[str, str | None], ...]
    session: SessionInfo
    received_at: float

    @property
    def message(self) -> EmailMessage:
        """The message parsed with ``email.policy.default``, its CRLFs read as Python's ``\\n`` (``raw`` keeps
        the wire's bytes); a fresh object each time: change it freely."""
        text = self.raw.replace(b"\r\n", b"\n")
        message: EmailMessage = email.message_from_bytes(text, policy=email.policy.default)
        return message

    @property
    def subject(self) -> str | None:
        subject = self.message["Subject"]
        return None if subject is None else str(subject)

    @property
    def text(self) -> str | None:
        """The text/plain body (the preferred one of a multipart message), or ``None``."""
        body = self.message.get_body(("plain",))
        return None if body is None else cast(str, body.get_content())

    @property
    def html(self) -> str | None:
        body = self.message.get_body(("html",))
        return None if body is None else cast(str, body.get_content())

    @property
    def attachments(self) -> list[Attachment]:
        """The attached parts (``filename``, ``content_type``, ``content`` as decoded bytes), in order: parsed from
        ``raw`` as it is, so that an unencoded text attachment keeps the wire's CRLF line ends."""
        return attachments(email.message_from_bytes(self.raw, policy=email.policy.default))

    @property
    def links(self) -> list[str]:
        """The URLs in the text part, then the ``href`` targets of the HTML part's links, each once."""
        return links(self.text, self.html)

    def code(self, pattern: str | re.Pattern[str]) -> str:
        """A one-time code: the first group of ``pattern``'s first match in the text part (the HTML part if
        there is none), or the whole match without groups; an ``AssertionError`` quoting what it searched."""
        __tracebackhide__ = True
        return first_code(pattern, self.text, self.html, f"the message {self.summary()}")

    def assert_dkim(self, public_key: str | bytes) -> None:
        """Fail unless the first DKIM-Signature verifies with ``public_key`` (a PEM RSA public key, or the DNS
        TXT record, ``v=DKIM1; k=rsa; p=...``), with no DNS lookup. Needs dkimpy (the testing extra)."""
        __tracebackhide__ = True
        verify_dkim(self.raw, public_key, f"the message {self.summary()}")

    def sent_to(self, address: str) -> bool:
        """Whether ``address`` was an envelope recipient (exact; the domain without case)."""
        return any(same_address(rcpt, address) for rcpt in self.rcpt_tos)

    def summary(self) -> str:
        return (
            f"from <{self.mail_from}> to {', '.join(f'<{r}>' for r in self.rcpt_tos)}"
            f" subject={self.subject!r} ({len(self.raw)} bytes)"
        )


class Mailbag:
    """Every message a server received, in order, for all its views."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.messages: list[ReceivedMessage] = []
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        #: Whether a session is between an accepted MAIL and the end of its transaction (the server sets it).
        self.in_transaction: Callable[[], bool] = lambda: False

    def add(self, message: ReceivedMessage) -> None:
        with self.changed:
            self.messages.append(message)
            self.changed.notify_all()
            waiters = list(self._waiters)
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def watch(self, waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self.changed:
            self._waiters.add(waiter)

    def unwatch(self, waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self.changed:
            self._waiters.discard(waiter)


class Outbox:
    """The messages one test sees (those since it began, or since ``clear()``), with waits and filters.

    Failed waits raise ``AssertionError`` listing what did arrive.
    """

    def __init__(self, bag: Mailbag) -> None:
        self._bag = bag
        with bag.changed:
            self._start = len(bag.messages)

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._bag.changed:
            return self._bag.messages[self._start :]

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[ReceivedMessage]:
        return iter(self.messages)

    def __getitem__(self, index: int) -> ReceivedMessage:
        return self.messages[index]

    def __bool__(self) -> bool:
        return bool(self.messages)

    def clear(self) -> None:
        """Forget what arrived so far (for this view only)."""
        with self._bag.changed:
            self._start = len(self._bag.messages)

    def filter(
        self,
        *,
        mail_from: str | None = None,
        rcpt_to: str | None = None,
        subject: str | None = None,
        where: Predicate | None = None,
    ) -> list[ReceivedMessage]:
        """The messages from ``mail_from`` (envelope), to ``rcpt_to`` (any envelope recipient, Bcc included),
        with exactly this ``subject``, for which ``where`` is true: addresses compare exactly, domains without case."""
        return [
            message
            for message in self.messages
            if (mail_from is None or same_address(message.mail_from, mail_from))
            and (rcpt_to is None or message.sent_to(rcpt_to))
            and (subject is None or message.subject == subject)
            and (where is None or where(message))
        ]

    def sent_to(self, address: str) -> list[ReceivedMessage]:
        return self.filter(rcpt_to=address)

    def sent_by(self, address: str) -> list[ReceivedMessage]:
        return self.filter(mail_from=address)

    @overload
    def wait_for(
        self,
        what: int = 1,
        timeout: float = 5.0,
        *,
        mail_from: str | None = None,
        rcpt_to: str | None = None,
        subject: str | None = None,
    ) -> list[ReceivedMessage]: ...
    @overload
    def wait_for(self, what: Predicate, timeout: float = 5.0) -> ReceivedMessage: ...
    def wait_for(
        self,
        what: int | Predicate = 1,
        timeout: float = 5.0,
        *,
        mail_from: str | None = None,
        rcpt_to: str | None = None,
        subject: str | None = None,
        count: int | None = None,
    ) -> list[ReceivedMessage] | ReceivedMessage:
        """Block until ``what`` (or ``count``) messages arrived, those matching ``filter``'s keys if given (then
        return them), or until one matches the predicate ``what`` (return it)."""
        __tracebackhide__ = True
        wanted = _Wanted.of(what, count, mail_from, rcpt_to, subject)
        deadline = time.monotonic() + timeout
        with self._bag.changed:
            while (found := wanted.found(self)) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(self._missing(wanted, timeout))
                self._bag.changed.wait(left)
        return found

    @overload
    async def wait_for_async(
        self,
        what: int = 1,
        timeout: float = 5.0,
        *,
        mail_from: str | None = None,
        rcpt_to: str | None = None,
        subject: str | None = None,
    ) -> list[ReceivedMessage]: ...
    @overload
    async def wait_for_async(self, what: Predicate, timeout: float = 5.0) -> ReceivedMessage: ...
    async def wait_for_async(
        self,
        what: int | Predicate = 1,
        timeout: float = 5.0,
        *,
        mail_from: str | None = None,
        rcpt_to: str | None = None,
        subject: str | None = None,
        count: int | None = None,
    ) -> list[ReceivedMessage] | ReceivedMessage:
        """``wait_for`` for asyncio tests: the loop (and the client under test on it) runs while it waits."""
        __tracebackhide__ = True
        wanted = _Wanted.of(what, count, mail_from, rcpt_to, subject)
        loop = asyncio.get_running_loop()
        waiter = (loop, asyncio.Event())
        self._bag.watch(waiter)
        try:
            async with asyncio.timeout(timeout):
                while (found := wanted.found(self)) is None:
                    await waiter[1].wait()
                    waiter[1].clear()
        except TimeoutError:
            raise AssertionError(self._missing(wanted, timeout)) from None
        finally:
            self._bag.unwatch(waiter)
        return found

    def assert_no_message(self, within: float = 0.5, where: Predicate | None = None) -> None:
        """Fail if a message (one for which ``where`` is true) has arrived, or arrives within ``within`` seconds.

        A message is in the outbox before its client sees the 250, so with no session in a transaction
        nothing more can be on its way: the check is then instant. Otherwise it waits, at most ``within``,
        for those transactions to end."""
        __tracebackhide__ = True
        deadline = time.monotonic() + within
        with self._bag.changed:
            while True:
                unwanted = [message for message in self.messages if where is None or where(message)]
                if unwanted:
                    raise AssertionError(f"expected no message, got {len(unwanted)}:\n{_listing(unwanted)}")
                left = deadline - time.monotonic()
                if left <= 0 or not self._bag.in_transaction():
                    return
                self._bag.changed.wait(min(left, _TRANSACTION_POLL))

    def _missing(self, wanted: _Wanted, timeout: float) -> str:
        messages = self.messages
        return f"waited {timeout} s for {wanted}; {len(messages)} arrived:\n{_listing(messages)}"

    def __repr__(self) -> str:
        return f"<Outbox {len(self)} message(s)>"


def _listing(messages: list[ReceivedMessage]) -> str:
    return "\n".join(f"  #{n} {message.summary()}" for n, message in enumerate(messages, 1)) or "  (nothing)"


def _name(predicate: Predicate) -> str:
    return getattr(predicate, "__qualname__", repr(predicate))


@dataclass(frozen=True)
class _Wanted:
    """What a wait waits for, and how its failure says so."""

    count: int
    predicate: Predicate | None = None
    mail_from: str | None = None
    rcpt_to: str | None = None
    subject: str | None = None

    @classmethod
    def of(
        cls, what: int | Predicate, count: int | None, mail_from: str | None, rcpt_to: str | None, subject: str | None
    ) -> _Wanted:
        if not callable(what):
            return cls(what if count is None else count, None, mail_from, rcpt_to, subject)
        if count is not None or (mail_from, rcpt_to, subject) != (None, None, None):
            raise TypeError("wait_for takes a predicate or filter keys (mail_from=, rcpt_to=, subject=), not both")
        return cls(1, what)

    def found(self, outbox: Outbox) -> list[ReceivedMessage] | ReceivedMessage | None:
        if self.predicate is not None:
            return next((message for message in outbox.messages if self.predicate(message)), None)
        matching = outbox.filter(mail_from=self.mail_from, rcpt_to=self.rcpt_to, subject=self.subject)
        return matching[: self.count] if len(matching) >= self.count else None

    def __str__(self) -> str:
        if self.predicate is not None:
            return f"a message matching {_name(self.predicate)}"
        parts = ["a message" if self.count == 1 else f"{self.count} messages"]
        parts += [f"from <{self.mail_from}>"] if self.mail_from is not None else []
        parts += [f"to <{self.rcpt_to}>"] if self.rcpt_to is not None else []
        parts += [f"with subject {self.subject!r}"] if self.subject is not None else []
        return " ".join(parts)
