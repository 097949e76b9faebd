"""HTTP delivery as a stock store: the client's 250 comes only once the application answered 2xx.

This is the synchronous mode: each message is POSTed while the client
waits, and what the endpoint answered decides the reply.  A permanent
refusal (400, 403, 404, 410, 413, 422) is a 554 5.6.0, anything else that
is not a 2xx (a timeout, no connection, 429, 5xx) a 451 4.4.1, so the client
tries again later.  The endpoint's own words never reach the client (they
are logged, bounded).  The message is held in memory until the end of data
(in ``envelope.content``, where the default ``data_chunk`` keeps it); the
server's message size limit bounds it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from smtpwire import Reply

from ._handler import AsyncHandler, Handler
from ._http_delivery import DeliveryResult, HttpPoster
from ._http_payload import delivery_payload, new_message_id
from ._session import Envelope, Session

log = logging.getLogger("smtpwire.store")

#: The endpoint refused the message for good: bounce it, in words of our own.
REFUSED = Reply(554, ["The message was not accepted for delivery"], enhanced=(5, 6, 0))
#: The endpoint could not take it now: the client keeps it and tries again.
TRY_LATER = Reply(451, ["Delivery is not possible right now; try again later"], enhanced=(4, 4, 1))


class _Posting:
    """What both stores share: the payload of a message, and the reply its delivery result calls for."""

    def __init__(self, poster: HttpPoster, clock: Callable[[], float] = time.time) -> None:
        self.poster = poster
        self.clock = clock

    def payload(self, session: Session, envelope: Envelope) -> tuple[str, bytes]:
        """A fresh message id, and the payload of the message the envelope kept."""
        message_id = new_message_id()
        payload = delivery_payload(session, envelope, bytes(envelope.content), message_id, received_at=self.clock())
        return message_id, payload

    def reply(self, session: Session, envelope: Envelope, message_id: str, result: DeliveryResult) -> Reply | None:
        """``None`` (250) once delivered; else the refusal, with what the endpoint said logged."""
        if result.outcome == "delivered":
            self.delivered(session, envelope, message_id, result)
            return None
        log.warning(
            "session %s: %s not delivered to %s (%s): %s",
            session.id,
            message_id,
            self.poster.endpoint.url,
            result.outcome,
            result.detail,
        )
        return REFUSED if result.outcome == "permanent" else TRY_LATER

    def delivered(self, session: Session, envelope: Envelope, message_id: str, result: DeliveryResult) -> None:
        """The endpoint took the message (``result.status``, 2xx): say so."""
        log.info("session %s: %s delivered to %s (%s)", session.id, message_id, self.poster.endpoint.url, result.status)


class AsyncHttpStore(_Posting, AsyncHandler):
    """POSTs each message to ``poster``'s endpoint and answers the client from its answer (asyncio, anyio).

    ``clock`` gives the payload's ``received_at`` (seconds since the epoch).
    Sessions wait on their own deliveries only; ``poster`` bounds how many
    requests are open at once.
    """

    async def message(self, session: Session, envelope: Envelope) -> Reply | None:
        message_id, payload = self.payload(session, envelope)
        return self.reply(session, envelope, message_id, await self.poster.post(message_id, payload))


class HttpStore(_Posting, Handler):
    """``AsyncHttpStore`` for the blocking adapter: the session's thread waits for the answer.

    (On the MemoryBIO adapter, the loop that drives it would wait too: use
    ``AsyncHttpStore`` on an async adapter there.)
    """

    def message(self, session: Session, envelope: Envelope) -> Reply | None:
        message_id, payload = self.payload(session, envelope)
        return self.reply(session, envelope, message_id, self.poster.post_sync(message_id, payload))
