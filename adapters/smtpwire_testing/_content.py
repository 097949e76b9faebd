"""What tests look for inside a message, as Mailpit's users ask for it: attachments, links, one-time codes."""

from __future__ import annotations

import email
import re
from dataclasses import dataclass
from email.message import EmailMessage
from html.parser import HTMLParser

#: A URL in plain text: a scheme, then anything up to white space or a character that closes or quotes it.
_TEXT_URL = re.compile(r"""\b(?:https?|ftp)://[^\s<>"'`)\]}]+|\bmailto:[^\s<>"'`)\]}]+""", re.IGNORECASE)
#: Sentence punctuation that ends a URL in text more often than it belongs to it.
_TRAILING = ".,;:!?"
#: How much of the searched text an unmatched ``code()`` quotes.
_QUOTED = 400


@dataclass(frozen=True)
class Attachment:
    """One attached part: its file name (``None`` if it has none), its content type, its decoded bytes."""

    filename: str | None
    content_type: str
    content: bytes


def attachments(message: EmailMessage) -> list[Attachment]:
    """The parts marked ``attachment`` or carrying a file name (inline images too), in order."""
    found = []
    for part in message.walk():
        if part.is_multipart() or not (part.is_attachment() or part.get_filename()):
            continue
        payload = part.get_payload(decode=True)
        content = payload if isinstance(payload, bytes) else b""
        found.append(Attachment(part.get_filename(), part.get_content_type(), content))
    return found


def text_links(text: str) -> list[str]:
    """The URLs written out in plain text, trailing sentence punctuation left off."""
    return [match.group().rstrip(_TRAILING) for match in _TEXT_URL.finditer(text)]


class _Hrefs(HTMLParser):
    """Collects the ``href`` of every ``<a>`` and ``<area>``, entities decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("a", "area"):
            self.hrefs += [value.strip() for name, value in attrs if name == "href" and value and value.strip()]


def html_links(html: str) -> list[str]:
    """The ``href`` targets of an HTML body's links, in order."""
    parser = _Hrefs()
    parser.feed(html)
    parser.close()
    return parser.hrefs


def links(text: str | None, html: str | None) -> list[str]:
    """The links of the text part, then those of the HTML part, each once."""
    found = (text_links(text) if text is not None else []) + (html_links(html) if html is not None else [])
    return list(dict.fromkeys(found))


def first_code(pattern: str | re.Pattern[str], text: str | None, html: str | None, what: str) -> str:
    """The first match of ``pattern`` in the text part (the HTML part when there is none): its first group,
    or the whole match without groups. ``what`` names the message in the failure."""
    __tracebackhide__ = True
    regex = re.compile(pattern)
    searched, where = (text, "text part") if text is not None else (html, "HTML part")
    if searched is None:
        raise AssertionError(f"no text or HTML part to search for {regex.pattern!r} in {what}")
    match = regex.search(searched)
    if match is None:
        shown = searched if len(searched) <= _QUOTED else searched[:_QUOTED] + f"[... {len(searched) - _QUOTED} more]"
        raise AssertionError(f"no match for {regex.pattern!r} in the {where} of {what}:\n{shown}")
    return match.group(1) if regex.groups else match.group()


def dkim_record(public_key: str | bytes) -> bytes:
    """The DNS TXT record a verifier would look up: as given (``v=DKIM1; k=...; p=...``), or made from a PEM
    RSA public key."""
    text = public_key.decode("ascii") if isinstance(public_key, bytes) else public_key
    if "-----BEGIN PUBLIC KEY-----" not in text:
        return text.strip().encode("ascii")
    body = "".join(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("-----"))
    return f"v=DKIM1; k=rsa; p={body}".encode("ascii")


def verify_dkim(raw: bytes, public_key: str | bytes, what: str) -> None:
    """Verify the message's first DKIM-Signature against ``public_key`` (no DNS lookup: the key is the answer
    to the one a verifier would make); an ``AssertionError`` saying why not."""
    __tracebackhide__ = True
    import dkim  # type: ignore[import-untyped]  # dkimpy, of the testing extra: loaded only when asked

    record = dkim_record(public_key)

    def answer(name: bytes, timeout: int = 5) -> bytes:
        return record

    signature = email.message_from_bytes(raw).get("DKIM-Signature")
    if signature is None:
        raise AssertionError(f"no DKIM-Signature in {what}")
    try:
        verified = dkim.DKIM(raw).verify(dnsfunc=answer)
    except dkim.DKIMException as error:
        raise AssertionError(f"the DKIM signature of {what} does not verify: {error}") from None
    if not verified:
        raise AssertionError(f"the DKIM signature of {what} does not verify with this key:\n  {signature}")
