"""HTTP delivery for any adapter: the signed payload, the poster, and the stores (at once, or through a spool).

``AsyncHttpStore`` answers 250 only once the application answered 2xx;
``AsyncSpoolStore`` answers once the message is durably in a ``Spool``, and
``SpoolDelivery.run()`` posts what the spool holds, with retries.  They need
the ``http`` extra (httpx, standardwebhooks); see docs/http.md.
"""

from ._http_delivery import DeliveryResult, HttpEndpoint, HttpPoster, classify, load_webhook_secret, sign
from ._http_payload import delivery_payload, new_message_id
from ._http_store import AsyncHttpStore, HttpStore
from ._spool import AsyncSpoolStore, Spool, SpoolDelivery

__all__ = [
    "AsyncHttpStore",
    "AsyncSpoolStore",
    "DeliveryResult",
    "HttpEndpoint",
    "HttpPoster",
    "HttpStore",
    "Spool",
    "SpoolDelivery",
    "classify",
    "delivery_payload",
    "load_webhook_secret",
    "new_message_id",
    "sign",
]
