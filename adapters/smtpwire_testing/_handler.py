"""The test server's handler: it records what it acknowledged, checks AUTH users and applies the faults."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import smtpwire
from smtpwire_asyncio import AsyncHandler, Envelope, Session
from smtpwire_handler import MaybeAwaitable, Params

from ._faults import Disconnect, Fail, Faults, Point
from ._outbox import Mailbag, ReceivedMessage, Recipients, SessionInfo
from ._transcript import TranscriptRecorder

T = TypeVar("T")
#: ``session.state`` key: a SCRAM attempt's first credentials lookup was seen (faults apply to that one only).
_SCRAM_STARTED = "smtpwire_testing.scram_started"


class RecordingHandler(AsyncHandler):
    """Every hook first asks the faults; those that pass answer as a plain server would."""

    def __init__(
        self,
        *,
        bag: Mailbag,
        faults: Faults,
        transcript: TranscriptRecorder,
        users: Mapping[str, str],
        drop: Callable[[Session], None],
        hostname: str,
        discard: bool = False,
    ) -> None:
        self._discard = discard
        self._bag = bag
        self._faults = faults
        self._transcript = transcript
        self._users = dict(users)
        self._scram: dict[str, smtpwire.ScramCredentials] = {}
        self._drop = drop
        self._hostname = hostname

    # -- hooks -------------------------------------------------------------------------

    def connect(self, session: Session) -> MaybeAwaitable[smtpwire.Reply | None]:
        self._transcript.watch(session.id)
        return self._run("connect", session)

    def helo(self, session: Session, name: str) -> MaybeAwaitable[smtpwire.Reply | None]:
        return self._run("ehlo", session, (name,))

    def ehlo(self, session: Session, name: str) -> MaybeAwaitable[smtpwire.Reply | None]:
        return self._run("ehlo", session, (name,))

    def mail_from(self, session: Session, address: str, params: Params) -> MaybeAwaitable[smtpwire.Reply | None]:
        return self._run("mail", session, (address,))

    def rcpt_to(self, session: Session, address: str, params: Params) -> MaybeAwaitable[smtpwire.Reply | None]:
        return self._run("rcpt", session, (address,))

    def data_start(self, session: Session) -> MaybeAwaitable[smtpwire.Reply | None]:
        return self._run("data", session, _recipients(session.envelope))

    def message(self, session: Session, envelope: Envelope) -> MaybeAwaitable[smtpwire.Reply | None]:
        return self._run("end_of_data", session, tuple(envelope.rcpt_tos), lambda: self._record(session, envelope))

    def deliver(self, session: Session, envelope: Envelope, recipient: str) -> MaybeAwaitable[smtpwire.Reply | None]:
        """LMTP: each recipient is delivered (and recorded, as its own copy) or refused on its own."""
        return self._run("end_of_data", session, (recipient,), lambda: self._record(session, envelope, recipient))

    def authenticate(
        self, session: Session, credentials: smtpwire.AuthCredentials
    ) -> MaybeAwaitable[bool | smtpwire.Reply | None]:
        return self._run("auth", session, (credentials.username,), lambda: self._password_ok(credentials))

    def credentials(
        self, session: Session, lookup: smtpwire.CredentialsLookup
    ) -> MaybeAwaitable[smtpwire.ScramCredentials | str | smtpwire.Reply | None]:
        if lookup.mechanism == "SCRAM-SHA-256" and session.state.pop(_SCRAM_STARTED, False):
            return self._secret(lookup)  # the attempt's second lookup: its faults were applied at the first
        if lookup.mechanism == "SCRAM-SHA-256":
            session.state[_SCRAM_STARTED] = True
        return self._run("auth", session, (lookup.username,), lambda: self._secret(lookup))

    # -- faults ------------------------------------------------------------------------

    def _run(
        self, point: Point, session: Session, arguments: Sequence[str] = (), then: Callable[[], T] | None = None
    ) -> MaybeAwaitable[T | smtpwire.Reply | None]:
        """The faults at ``point`` (a delay makes the answer an awaitable), else ``then()``'s answer."""
        delay, outcome = self._faults.due(point, arguments)
        if delay:
            return self._later(delay, session, outcome, then)
        return self._act(session, outcome, then)

    async def _later(
        self, delay: float, session: Session, outcome: Fail | Disconnect | None, then: Callable[[], T] | None
    ) -> T | smtpwire.Reply | None:
        await asyncio.sleep(delay)
        return self._act(session, outcome, then)

    def _act(
        self, session: Session, outcome: Fail | Disconnect | None, then: Callable[[], T] | None
    ) -> T | smtpwire.Reply | None:
        if isinstance(outcome, Fail):
            session.state.pop(_SCRAM_STARTED, None)
            return outcome.reply
        if isinstance(outcome, Disconnect):
            if outcome.abrupt:
                self._drop(session)  # the 421 below never reaches the client
            return smtpwire.Reply(421, f"{self._hostname} Injected disconnect, closing connection", (4, 4, 2))
        return then() if then is not None else None

    # -- answers -------------------------------------------------------------------------

    def _record(self, session: Session, envelope: Envelope, recipient: str | None = None) -> None:
        """Put the message in the outbox (unless discarding): for every recipient, or LMTP's one ``recipient``."""
        if self._discard:
            return
        chosen = range(len(envelope.rcpt_tos)) if recipient is None else [envelope.rcpt_tos.index(recipient)]
        self._bag.add(
            ReceivedMessage(
                raw=bytes(envelope.content),
                mail_from=envelope.mail_from,
                mail_params=dict(envelope.mail_params),
                rcpt_tos=Recipients(envelope.rcpt_tos[n] for n in chosen),
                rcpt_params=tuple(dict(envelope.rcpt_params[n]) for n in chosen),
                session=session_info(session),
                received_at=time.time(),
            )
        )

    def _password_ok(self, credentials: smtpwire.AuthCredentials) -> bool:
        password = self._users.get(credentials.username)
        if password is None or credentials.authzid not in ("", credentials.username):
            return False
        return hmac.compare_digest(password.encode(), credentials.password.encode())

    def _secret(self, lookup: smtpwire.CredentialsLookup) -> smtpwire.ScramCredentials | str | None:
        password = self._users.get(lookup.username)
        if password is None or lookup.authzid not in ("", lookup.username):
            return None
        if lookup.mechanism != "SCRAM-SHA-256":
            return password  # CRAM-MD5 needs the password itself
        if lookup.username not in self._scram:
            self._scram[lookup.username] = smtpwire.scram_credentials(password)
        return self._scram[lookup.username]


def _recipients(envelope: Envelope | None) -> tuple[str, ...]:
    return tuple(envelope.rcpt_tos) if envelope is not None else ()


def session_info(session: Session) -> SessionInfo:
    peer = session.peer if isinstance(session.peer, tuple) else None
    user = session.authenticated
    return SessionInfo(
        id=session.id,
        peer=(str(peer[0]), int(peer[1])) if peer else None,
        helo_name=session.helo_name,
        esmtp=session.esmtp,
        tls_version=session.tls.version if session.tls else None,
        tls_cipher=session.tls.cipher if session.tls else None,
        implicit_tls=session.implicit_tls,
        authenticated_user=user.username if user else None,
        auth_mechanism=user.mechanism if user else None,
    )
