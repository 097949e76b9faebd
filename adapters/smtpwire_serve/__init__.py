"""``smtpwire serve``: a mail server application on the smtpwire adapters.

The CLI, the durable Maildir store, the sink, the credentials file and the
development certificate.  It picks the server path per event loop: asyncio
Protocols (uvloop when installed) by default, the anyio adapter for trio.
"""
