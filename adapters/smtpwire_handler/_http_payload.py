"""The JSON body that HTTP delivery posts for one accepted message.

The body is UTF-8 JSON, compact, with its keys sorted (the same message
gives the same bytes).  Schema, version 1::

    {
      "version": 1,
      "id": "msg_3f2a...",             # the message id; every delivery attempt of a message carries the same
      "received_at": "2026-12-06T18:34:27.123Z",   # RFC 3339, UTC, when the end of data arrived
      "envelope": {
        "mail_from": "alice@example.com",          # "" for the null reverse-path <>
        "mail_params": {"BODY": "8BITMIME", "SMTPUTF8": null},   # MAIL's ESMTP parameters (keywords upper-case)
        "rcpt_to": ["bob@example.net", "carol@example.net"],      # every accepted recipient, Bcc included
        "rcpt_params": [{}, {"NOTIFY": "NEVER"}]   # each recipient's ESMTP parameters, in rcpt_to's order
      },
      "session": {
        "client": {"address": "192.0.2.1", "port": 41234, "name": null},
                                        # address: "unix" on a Unix socket (port null there); after XCLIENT or
                                        # a PROXY header, the client they name; name: XCLIENT's NAME, else null
        "helo": "mail.example.com",     # the HELO/EHLO name, or null
        "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"},   # or null without TLS
        "authenticated": "alice"        # the AUTH username, or null
      },
      "authentication": {               # null unless sender authentication checked the message
        "results": [{"method": "spf", "result": "pass", "reason": null,
                     "properties": [["smtp.mailfrom", "example.com"]]}, ...],
        "header": "Authentication-Results: mx.example.net;\\r\\n\\tspf=pass ..."   # the field, CRLF included
      },
      "headers": [["Subject", "Café"], ["To", "bob@example.net"], ...],
      "raw": "RnJvbTogLi4u..."          # the message as received, byte for byte, in base64 (RFC 4648)
    }

``headers`` is a convenience: the header fields in order, names as written,
values unfolded and RFC 2047 encoded-words decoded, raw 8-bit octets read
as UTF-8 (what cannot be read becomes U+FFFD).  It is bounded: only the
first 256 KiB of the header section and its first 1000 fields are read, and
an encoded-word that does not decode stays as written.  ``raw`` is the
authority: the receiving application can parse it with any MIME library.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.header
import email.parser
import email.policy
import itertools
import json
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from ._session import Envelope, Session

#: The schema version the payload carries.
PAYLOAD_VERSION = 1
#: How much of the header section ``headers`` reads, and how many of its fields.
MAX_HEADER_OCTETS = 256 * 1024
MAX_HEADER_FIELDS = 1000
#: An RFC 2047 encoded-word; the classes exclude ``?`` and white space, so a failed match costs its length only.
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,64})\?([bBqQ])\?([^?\s]*)\?=")
#: An encoded-word whose text really is empty (``=?utf-8?q??=``), not one that decodes to nothing.
_EMPTY_WORD = re.compile(r"=\?[^?]*\?[bBqQ]\?\?=")
_BETWEEN_ENCODED_WORDS = re.compile(r"[ \t]+")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def new_message_id() -> str:
    """A fresh message id, ``msg_`` and 32 hex digits: unguessable, and safe as a file name anywhere."""
    return "msg_" + secrets.token_hex(16)


def delivery_payload(
    session: Session,
    envelope: Envelope,
    message: bytes,
    message_id: str,
    *,
    received_at: float | None = None,
) -> bytes:
    """The JSON body for ``message`` (the data as the store got it), schema above.

    ``received_at`` is seconds since the epoch (default: now).
    """
    body = {
        "version": PAYLOAD_VERSION,
        "id": message_id,
        "received_at": rfc3339(time.time() if received_at is None else received_at),
        "envelope": _envelope(envelope),
        "session": _session(session),
        "authentication": _authentication(session, envelope),
        "headers": parsed_headers(message),
        "raw": base64.b64encode(message).decode("ascii"),
    }
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def rfc3339(seconds: float) -> str:
    """``2026-12-06T18:34:27.123Z``: UTC, to the millisecond."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _envelope(envelope: Envelope) -> dict[str, Any]:
    return {
        "mail_from": envelope.mail_from,
        "mail_params": dict(envelope.mail_params),
        "rcpt_to": envelope.rcpt_tos,
        "rcpt_params": [dict(params) for params in envelope.rcpt_params],
    }


def _session(session: Session) -> dict[str, Any]:
    port = session.peer[1] if isinstance(session.peer, tuple) and len(session.peer) > 1 else None
    tls = session.tls
    user = session.authenticated
    return {
        "client": {"address": session.peer_host, "port": port, "name": session.client_name},
        "helo": session.helo_name,
        "tls": {"version": tls.version, "cipher": tls.cipher} if tls is not None else None,
        "authenticated": user.username if user is not None else None,
    }


def _authentication(session: Session, envelope: Envelope) -> dict[str, Any] | None:
    verdict = envelope.authentication
    if verdict is None:
        return None
    results = [
        {"method": r.method, "result": r.result, "reason": r.reason, "properties": [list(p) for p in r.properties]}
        for r in verdict.results
    ]
    field = envelope.authentication_field  # as written on the message; an envelope made by hand: one written now
    header = (field or verdict.header(session.conn.config.hostname)).decode("ascii")
    return {"results": results, "header": header}


def parsed_headers(message: bytes) -> list[list[str]]:
    """The header fields of ``message`` as ``[name, value]`` pairs, in order, bounded (see the module's text)."""
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)  # splits fields; parses no value
    fields = itertools.islice(parser.parsebytes(_header_section(message)).raw_items(), MAX_HEADER_FIELDS)
    return [[name, _decoded(value)] for name, value in fields]  # raw: the value as written, octets and all


def _header_section(message: bytes) -> bytes:
    """The header section (up to the empty line), or its first ``MAX_HEADER_OCTETS`` cut at a line end."""
    end = _HEADER_END.search(message, 0, MAX_HEADER_OCTETS + 4)
    if end is not None:
        return message[: end.start()]
    head = message[:MAX_HEADER_OCTETS]
    return head if len(message) <= MAX_HEADER_OCTETS else head[: head.rfind(b"\n") + 1]


def _decoded(value: str) -> str:
    """A field value unfolded, read as UTF-8 (the parser kept raw octets as surrogates), encoded-words decoded."""
    text = _FOLD.sub("", value).encode("ascii", "surrogateescape").decode("utf-8", "replace")
    words = list(_ENCODED_WORD.finditer(text))
    if not words:
        return text
    pieces: list[str] = []
    position = 0
    after_decoded = False
    for word in words:
        between = text[position : word.start()]
        decoded = _decoded_word(word.group(0))
        if not (after_decoded and decoded is not None and _BETWEEN_ENCODED_WORDS.fullmatch(between)):
            pieces.append(between)  # space between two decoded words is not text (RFC 2047 6.2)
        pieces.append(word.group(0) if decoded is None else decoded)
        position, after_decoded = word.end(), decoded is not None
    pieces.append(text[position:])
    return "".join(pieces)


def _decoded_word(word: str) -> str | None:
    """One encoded-word's text; ``None`` when its charset or encoding is not readable."""
    try:
        ((octets, charset),) = email.header.decode_header(word)
        text = bytes(octets).decode(charset or "ascii", "replace")
    except (email.errors.HeaderParseError, binascii.Error, LookupError, ValueError):
        return None
    return text if text or _EMPTY_WORD.match(word) else None  # "####" decodes to nothing: not a word, then
