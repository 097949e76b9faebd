"""Sender authentication as a stock handler: SPF at MAIL, DKIM, ARC and DMARC at the end of data.

It wraps the store that keeps the message: the store's hooks run as they
would, except that the message reaches it only once checked, with this
server's Authentication-Results field on top (after the store's own trace
headers, where Gmail and Postfix's milters put it) and any field arriving
from outside that claims this server's authserv-id removed (RFC 8601 5).
The message is held in memory meanwhile (in ``envelope.content``, where
the driver keeps it at no cost), as DKIM needs it whole; the server's
message size limit bounds it.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import smtpwire_verify
from smtpwire import Reply
from smtpwire_verify import Check, Verdict, remove_claims, verify_message, verify_sender

from ._around import Around, settled, then, then_call
from ._handler import AsyncHandler, Handler, MaybeAwaitable, Params
from ._resolver import AsyncResolver, Resolver
from ._session import Envelope, Session

#: Where the verdict on the MAIL FROM identity waits for the transaction's envelope.
SENDER_VERDICT = "smtpwire.sender_verdict"


@dataclass(frozen=True)
class Verification:
    """What to check and what to enforce; every policy is off unless asked for.

    ``methods`` as ``smtpwire_verify.methods_from`` reads them (DMARC brings
    SPF and DKIM along).  ``authserv_id`` defaults to the server's hostname.
    ``reject_spf_fail`` refuses an SPF ``fail`` at MAIL (550 5.7.23);
    ``enforce_dmarc`` refuses a DMARC ``reject`` at the end of data (550
    5.7.1) and files a ``quarantine`` into the Maildir++ folder
    ``quarantine_folder``.  Under a policy, a DNS failure that leaves the
    verdict open is 451, never a 250 for a message then dropped.  Clients
    that authenticated (AUTH) are checked but never refused by policy: they
    are submitting, not relaying.  ``dns_budget`` is the seconds of DNS one
    check (MAIL's, or the end of data's) may take in all.
    """

    methods: frozenset[str] = frozenset(smtpwire_verify.METHODS)
    authserv_id: str | None = None
    reject_spf_fail: bool = False
    enforce_dmarc: bool = False
    quarantine_folder: str = "Junk"
    dns_budget: float = 10.0
    max_signatures: int = 5
    min_key_bits: int = 1024
    clock: Callable[[], float] = field(default=time.time, repr=False)
    sample: Callable[[], float] = field(default=random.random, repr=False)


class _Checks(Around):
    """What both handlers share: which check to run when, and what its verdict means for the client."""

    WRAPS = frozenset({"mail_from", "data_chunk", "message", "message_aborted"})

    def __init__(self, store: Handler | AsyncHandler, verification: Verification | None) -> None:
        super().__init__(store)
        self.verification = verification or Verification()

    def pass_mail_from(self, session: Session, address: str, params: Params) -> Any:
        """The store's own answer to MAIL, once the check let it through (``None`` if it has no such hook)."""
        hook = self.store_hook("mail_from")
        return hook(session, address, params) if hook is not None else None

    def authserv_id(self, session: Session) -> str:
        return self.verification.authserv_id or session.conn.config.hostname

    def sender_check(self, session: Session, address: str) -> Check[Verdict] | None:
        """SPF for this MAIL, unless nothing asks for it or the client has no IP address (a Unix socket)."""
        if "spf" not in self.verification.methods or not _is_ip(session.peer_host):
            session.state[SENDER_VERDICT] = Verdict()
            return None
        steps = verify_sender(
            session.peer_host, address, session.helo_name or "", receiver=self.authserv_id(session), now=self._now()
        )
        return Check(steps)

    def sender_checked(self, session: Session, verdict: Verdict) -> Reply | None:
        """Keep the verdict for the transaction; with ``reject_spf_fail``, refuse a fail (or an open verdict)."""
        session.state[SENDER_VERDICT] = verdict
        spf = verdict.spf
        if spf is None or not self.verification.reject_spf_fail or session.authenticated is not None:
            return None
        if spf.result == "fail":
            why = spf.explanation or f"{spf.domain} does not designate {session.peer_host} as a permitted sender"
            return Reply(550, [f"SPF check failed: {why}"[:400]], enhanced=(5, 7, 23))
        if spf.result == "temperror":
            return Reply(
                451, [f"SPF check of {spf.domain} could not be completed; try again later"], enhanced=(4, 7, 24)
            )
        return None

    def message_check(self, session: Session, envelope: Envelope) -> tuple[Check[Verdict], bytes]:
        message, envelope.content = bytes(envelope.content), bytearray()  # the store gets it back once checked
        sender = session.state.pop(SENDER_VERDICT, None) or Verdict()
        v = self.verification
        steps = verify_message(
            message,
            sender,
            v.methods,
            now=self._now(),
            sample=v.sample(),
            max_signatures=v.max_signatures,
            min_key_bits=v.min_key_bits,
        )
        return Check(steps), message

    def message_checked(self, session: Session, envelope: Envelope, verdict: Verdict, message: bytes) -> Reply | bytes:
        """The refusal the policy asks for, or the message to store with its Authentication-Results on top."""
        envelope.authentication = verdict
        dmarc = verdict.dmarc
        if dmarc is not None and self.verification.enforce_dmarc and session.authenticated is None:
            if dmarc.disposition == "reject":
                return Reply(550, [f"Rejected by the DMARC policy of {dmarc.from_domain}"], enhanced=(5, 7, 1))
            if dmarc.result == "temperror":
                return Reply(451, ["The DMARC policy could not be checked; try again later"], enhanced=(4, 7, 1))
            if dmarc.disposition == "quarantine":
                envelope.folder = self.verification.quarantine_folder
        authserv_id = self.authserv_id(session)
        envelope.authentication_field = verdict.header(authserv_id)
        return envelope.authentication_field + remove_claims(message, authserv_id)

    def _now(self) -> int:
        return int(self.verification.clock())


class SenderAuthentication(_Checks, Handler):
    """Checks who really sent each message, for the blocking and MemoryBIO adapters, around ``store``.

    ``store`` is the handler that keeps the message (``MaildirStore``, your
    own); ``resolver`` a ``Resolver`` (default: the system's resolvers, with
    a cache of its own); ``verification`` what to check and enforce.  The
    verdict is ``envelope.authentication`` for the store's ``message`` hook.
    """

    store: Handler

    def __init__(
        self, store: Handler, resolver: Resolver | None = None, verification: Verification | None = None
    ) -> None:
        super().__init__(store, verification)
        self.resolver = resolver or Resolver()

    def mail_from(self, session: Session, address: str, params: Params) -> Reply | None:
        check = self.sender_check(session, address)
        if check is not None:
            refusal = self.sender_checked(session, self.resolver.run(check, budget=self.verification.dns_budget))
            if refusal is not None:
                return refusal
        result: Reply | None = self.pass_mail_from(session, address, params)
        return result

    def message(self, session: Session, envelope: Envelope) -> Reply | None:
        check, message = self.message_check(session, envelope)
        verdict = self.resolver.run(check, budget=self.verification.dns_budget)
        outcome = self.message_checked(session, envelope, verdict, message)
        if isinstance(outcome, Reply):
            self.store.message_aborted(session, outcome)
            return outcome
        self.store.data_chunk(session, outcome)
        return self.store.message(session, envelope)

    def message_aborted(self, session: Session, reply: Reply | None) -> None:
        self.store.message_aborted(session, reply)


class AsyncSenderAuthentication(_Checks, AsyncHandler):
    """``SenderAuthentication`` for the asyncio and anyio adapters, with an ``AsyncResolver``.

    ``store`` may be an ``AsyncHandler`` or a ``Handler``.  When the
    resolver's cache holds every answer a check needs, the hook answers
    inline; only a query that must go out makes the session wait.
    """

    def __init__(
        self,
        store: Handler | AsyncHandler,
        resolver: AsyncResolver | None = None,
        verification: Verification | None = None,
    ) -> None:
        super().__init__(store, verification)
        self.resolver = resolver or AsyncResolver()

    def mail_from(self, session: Session, address: str, params: Params) -> MaybeAwaitable[Reply | None]:
        check = self.sender_check(session, address)
        if check is not None and not self.resolver.answer_from_cache(check):
            return self._mail_from_after_dns(session, check, address, params)
        refusal = self.sender_checked(session, check.result) if check is not None else None
        return refusal or self.pass_mail_from(session, address, params)

    async def _mail_from_after_dns(
        self, session: Session, check: Check[Verdict], address: str, params: Params
    ) -> Reply | None:
        refusal = self.sender_checked(session, await self.resolver.run(check, budget=self.verification.dns_budget))
        return refusal or await settled(self.pass_mail_from(session, address, params))

    def message(self, session: Session, envelope: Envelope) -> MaybeAwaitable[Reply | None]:
        """Inline while the cache answers and the store's hooks do not wait; else a coroutine."""
        check, message = self.message_check(session, envelope)
        if not self.resolver.answer_from_cache(check):
            return self._message_after_dns(session, envelope, check, message)
        return self._store(session, envelope, self.message_checked(session, envelope, check.result, message))

    async def _message_after_dns(
        self, session: Session, envelope: Envelope, check: Check[Verdict], message: bytes
    ) -> Reply | None:
        verdict = await self.resolver.run(check, budget=self.verification.dns_budget)
        result: Reply | None = await settled(
            self._store(session, envelope, self.message_checked(session, envelope, verdict, message))
        )
        return result

    def _store(self, session: Session, envelope: Envelope, outcome: Reply | bytes) -> MaybeAwaitable[Reply | None]:
        """The refusal (the store told the message is aborted), or the checked message handed to the store."""
        if isinstance(outcome, Reply):
            aborted = self.store.message_aborted(session, outcome)
            return then(aborted, outcome) if inspect.isawaitable(aborted) else outcome
        fed = self.store.data_chunk(session, outcome)
        if inspect.isawaitable(fed):
            return then_call(fed, self.store.message, session, envelope)
        return self.store.message(session, envelope)

    def message_aborted(self, session: Session, reply: Reply | None) -> MaybeAwaitable[None]:
        return self.store.message_aborted(session, reply)


@functools.lru_cache(maxsize=4096)  # asked at every MAIL, of the few addresses a server hears from most
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
