"""The trace headers a store writes on top of each message: Return-Path and Received (RFC 5321 4.4).

Everything in them that the client chose (the HELO name, the envelope
addresses, the DSN parameters) is made safe for a header first: nothing can
end a line, open a comment or reorder what a mail reader shows.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
from collections.abc import Callable

from ._session import UNIX_PEER, Envelope, Session

#: What no header may carry: C0 and C1 controls (CR, LF, NUL, NEL ...), the Unicode line and
#: paragraph separators, the bidi controls (they reorder what a mail reader shows) and lone surrogates.
_UNSAFE_UTF8 = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_ASCII = re.compile("[^\x20-\x7e]")  # a message without SMTPUTF8 has ASCII headers (RFC 5322)
_SUB_DOMAIN = "[A-Za-z0-9\x80-\U0010ffff](?:[A-Za-z0-9\x80-\U0010ffff-]*[A-Za-z0-9\x80-\U0010ffff])?"
_DOMAIN = re.compile(f"{_SUB_DOMAIN}(?:\\.{_SUB_DOMAIN})*")  # RFC 5321 4.1.2, U-labels as RFC 6531 3.3 allows
_GENERAL_ADDRESS_LITERAL = re.compile("\\[[A-Za-z0-9-]*[A-Za-z0-9]:[\\x21-\\x5a\\x5e-\\x7e]+\\]")
_MAX_HELO = 255  # octets: RFC 5321 4.5.3.1.2, the longest domain
_MAX_ADDRESS = 512  # octets: twice RFC 5321's longest path, so no valid address is ever cut


def protocol_name(session: Session, smtputf8: bool, lmtp: bool = False) -> str:
    """The ``with`` keyword of RFC 5321 4.4, RFC 3848 and RFC 6531: SMTP, ESMTP, ESMTPSA, UTF8SMTPS, LMTPS, ...

    ``S`` when TLS is active, ``A`` when the client authenticated (AUTH needs
    EHLO or LHLO).  LMTP always starts with LHLO: LMTP, LMTPS, LMTPA, LMTPSA,
    and with SMTPUTF8 UTF8LMTP ... UTF8LMTPSA (RFC 6531 3.7.3).
    """
    if not (session.esmtp or lmtp):
        return "SMTP"
    base = ("UTF8" if smtputf8 else "") + ("LMTP" if lmtp else "SMTP" if smtputf8 else "ESMTP")
    return base + ("S" if session.tls else "") + ("A" if session.authenticated else "")


def peer_shown(session: Session) -> str:
    """The TCP-info of ``Received: from`` (RFC 5321 4.4): ``[192.0.2.7]``, ``[IPv6:...]``, or ``unix socket``.

    After XCLIENT named the client's host (a domain the core checked), the
    name comes first, as Postfix writes it: ``client.example [192.0.2.7]``.
    """
    if session.peer_host == UNIX_PEER:
        return "unix socket"
    name = session.client_name
    return f"{name} {address_literal(session.peer_host)}" if name else address_literal(session.peer_host)


def address_literal(host: str) -> str:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "unknown"
    return f"[IPv6:{ip.compressed}]" if ip.version == 6 else f"[{ip}]"


def is_address_literal(text: str) -> bool:
    """``[192.0.2.7]``, ``[IPv6:2001:db8::7]`` or ``[tag:content]`` (RFC 5321 4.1.3), an RFC 5322 domain-literal."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else ""
    if inner[:5].lower() == "ipv6:":
        return "%" not in inner and _parses(ipaddress.IPv6Address, inner[5:])
    return _parses(ipaddress.IPv4Address, inner) or _GENERAL_ADDRESS_LITERAL.fullmatch(text) is not None


def _parses(parse: Callable[[str], object], text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


def header_safe(text: str, utf8: bool) -> str:
    """``text`` with each character no header line may carry replaced by "?".

    "?" is atext, qtext and dtext alike, so an address stays an address and a
    line stays one line; the log (escaped, not replaced) keeps what it was.
    """
    return (_UNSAFE_UTF8 if utf8 else _UNSAFE_ASCII).sub("?", text)


def cut(text: str, octets: int) -> str:
    """``text`` if it fits in ``octets`` octets of UTF-8, else its head and "..." (never half a character)."""
    encoded = text.encode()
    if len(encoded) <= octets:
        return text
    return encoded[: octets - 3].decode(errors="ignore") + "..."


def helo_shown(name: str | None, utf8: bool) -> str:
    """The HELO name for ``Received: from`` (RFC 5321 4.4): as given if it is a domain or an address literal.

    Anything else (``[1.2.3.4])(by.trusted.example``) is shown as an RFC 5322
    quoted string, so no parenthesis, bracket or semicolon in it can open a
    comment or end a clause of the header.
    """
    name = name or ""
    safe = cut(header_safe(name, utf8), _MAX_HELO)
    if safe == name and (_DOMAIN.fullmatch(name) or is_address_literal(name)):
        return name
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


def address_shown(address: str, utf8: bool) -> str:
    """An envelope address for a header: unsafe characters replaced; one too long for any RFC is cut.

    A cut address loses its quotes and backslashes as well, so the cut never
    leaves a quoted string open to swallow the rest of the header.
    """
    safe = header_safe(address, utf8)
    shown = cut(safe, _MAX_ADDRESS)
    return shown if shown == safe else shown.replace('"', "?").replace("\\", "?")


def trace_headers(session: Session, envelope: Envelope, hostname: str | None = None) -> bytes:
    """Return-Path and a Received header (RFC 5321 4.4) for the top of the stored message.

    ``by hostname``, by default the server's (``ServerConfig.hostname``);
    ``with`` names the protocol as RFC 3848 does (LMTP when the server speaks it).

    One clause a line, each line bounded well under RFC 5322's 998 octets
    whatever the client sent, and nothing from the client that could end a
    line, open a comment or reorder the display (see ``helo_shown``,
    ``address_shown``).  Made once per envelope and hostname: a milter sees
    the very text the store writes.
    """
    if envelope._trace is not None and envelope._trace[0] == hostname:
        return envelope._trace[1]
    envelope._trace = (hostname, _trace_text(session, envelope, hostname))
    return envelope._trace[1]


def _trace_text(session: Session, envelope: Envelope, hostname: str | None) -> bytes:
    utf8 = "SMTPUTF8" in envelope.mail_params
    config = session.conn.config
    protocol = protocol_name(session, utf8, config.lmtp)
    lines = [
        f"Return-Path: <{address_shown(envelope.mail_from, utf8)}>",
        f"Received: from {helo_shown(session.helo_name, utf8)} ({peer_shown(session)})",
        f"\tby {hostname or config.hostname} (smtpwire) with {protocol} id {session.id}",
    ]
    if session.tls:
        lines.append(f"\t(using {session.tls.version} with cipher {session.tls.cipher} ({session.tls.bits} bits))")
    date = email.utils.formatdate(localtime=True)
    if len(envelope.rcpt_tos) == 1:
        lines.append(f"\tfor <{address_shown(envelope.rcpt_tos[0], utf8)}>; {date}")
    else:
        lines[-1] += f"; {date}"
    lines += request_headers(envelope, utf8)
    return ("\r\n".join(lines) + "\r\n").encode()


def request_headers(envelope: Envelope, utf8: bool) -> list[str]:
    """What the client asked of notifications (RFC 3461) and of TLS (RFC 8689), for whoever reads the mail.

    ``X-Smtpwire-DSN: RET=... ENVID=...`` for MAIL, one
    ``X-Smtpwire-DSN-Recipient: <address> NOTIFY=... ORCPT=...`` per recipient
    that asked, ``X-Smtpwire-RequireTLS: yes``.  ENVID and ORCPT keep the
    xtext the client sent (validated by the core: printable, no space, at most
    100 characters and 500 octets), not their decoded values, which may hold
    spaces, quotes and semicolons: so the header parses back as it was sent.
    """
    lines = []
    mail = [f"RET={envelope.dsn.ret}"] if "RET" in envelope.mail_params else []
    mail += [f"ENVID={envelope.mail_params['ENVID']}"] if "ENVID" in envelope.mail_params else []
    if mail:
        lines.append(header_safe("X-Smtpwire-DSN: " + " ".join(mail), utf8))
    # not strict: an Envelope made by hand may carry no parameters
    for address, params, dsn in zip(envelope.rcpt_tos, envelope.rcpt_params, envelope.rcpt_dsn, strict=False):
        asked = [f"NOTIFY={','.join(dsn.notify)}"] if dsn.notify else []
        asked += [f"ORCPT={params['ORCPT']}"] if "ORCPT" in params else []
        if asked:
            shown = " ".join(asked)
            lines.append(header_safe(f"X-Smtpwire-DSN-Recipient: <{address_shown(address, utf8)}> {shown}", utf8))
    if envelope.require_tls:
        lines.append("X-Smtpwire-RequireTLS: yes")
    return lines
