"""Which recipients ``smtpwire serve`` accepts mail for: ``--accept-domain`` and ``--recipients FILE``.

The file holds one entry a line: an address (``alice@example.org``) or a
whole domain (``@example.org``); ``#`` starts a comment line, blank lines
are skipped.  Addresses are compared as RFC 5321 2.4 allows a receiver to:
the domain without case and in A-label form (``bücher.example`` is
``xn--bcher-kva.example``), the local part as written but without case, as
Postfix compares it (the LMTP Maildir names a folder after the lower-cased
address too, so ``Alice@`` and ``alice@`` are one mailbox either way); no
other folding (dots, ``+tags``, quoting) is done.  ``postmaster`` alone and
``postmaster@`` any domain served are always accepted (RFC 5321 4.5.1).

Any other recipient gets ``550 5.1.1`` at RCPT, before any data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from smtpwire import Reply
from smtpwire_handler import Handler, Params, Session

#: RFC 5321 4.5.3.1: what the longest local part, domain and path may hold, in octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
#: An LDH label of a host name, once in A-label form.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: What no entry may hold: white space inside it, control characters, and the path's own brackets.
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f<>]")
POSTMASTER = "postmaster"


class RecipientsFileError(ValueError):
    """The recipients file cannot be used; the message names the file and the line."""


def a_label_domain(domain: str) -> str:
    """``domain`` as it is compared: lower-cased A-labels, or a lower-cased ``[address literal]``.

    ``ValueError`` says why it is no domain.
    """
    if domain.startswith("[") and domain.endswith("]") and len(domain) > 2:
        return domain.lower()  # RFC 5321 4.1.3; compared as written, hexadecimal digits without case
    if not domain.isascii():
        import idna  # its tables take 2 MiB: loaded only by a server that meets a non-ASCII domain

        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as error:
            raise ValueError(f"{domain!r} is not an internationalized domain name: {error}") from None
    lowered = domain.lower()
    if len(lowered) > MAX_DOMAIN or not all(_LABEL.fullmatch(label) for label in lowered.split(".")):
        raise ValueError(f"{domain!r} is not a domain name")
    return lowered


def compared_address(address: str) -> str | None:
    """A RCPT ``address`` (``local@domain``) as it is compared, or ``None`` without a domain or an IDN one.

    The core has checked its syntax; an ASCII domain is only lower-cased (what matches no entry is refused anyway).
    """
    local_part, at, domain = address.rpartition("@")  # a quoted local part may hold "@"; a domain never
    if not at or not local_part:
        return None
    if domain.isascii():
        return f"{local_part.lower()}@{domain.lower()}"
    try:
        return f"{local_part.lower()}@{a_label_domain(domain)}"
    except ValueError:
        return None


@dataclass(frozen=True)
class RecipientTable:
    """Recipients accepted: whole ``domains`` and single ``addresses``, each in its compared form."""

    domains: frozenset[str] = frozenset()
    addresses: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.domains) + len(self.addresses)

    def __or__(self, other: RecipientTable) -> RecipientTable:
        return RecipientTable(self.domains | other.domains, self.addresses | other.addresses)

    def summary(self) -> str:
        """What the table holds, for the log: ``2 address(es) and 1 domain(s)``."""
        return f"{len(self.addresses)} address(es) and {len(self.domains)} domain(s)"

    def served(self) -> frozenset[str]:
        """Every domain mail is accepted for at all: where ``postmaster`` must be reachable."""
        return self.domains | {address.rpartition("@")[2] for address in self.addresses}


def parse_entry(entry: str) -> tuple[str | None, str | None]:
    """One line's ``(domain, address)`` (one of them ``None``); ``ValueError`` says what is wrong with it."""
    if _FORBIDDEN.search(entry):
        raise ValueError("an entry is one address or @domain, without spaces or control characters")
    if entry.startswith("@"):
        return a_label_domain(entry[1:].removesuffix(".")), None
    local_part, at, domain = entry.rpartition("@")
    if not at or not local_part:
        raise ValueError("expected an address (user@domain) or @domain")
    if len(local_part.encode()) > MAX_LOCAL_PART:
        raise ValueError(f"the local part is longer than {MAX_LOCAL_PART} octets (RFC 5321 4.5.3.1.1)")
    return None, f"{local_part.lower()}@{a_label_domain(domain.removesuffix('.'))}"


def _entries(data: bytes, path: Path) -> Iterator[tuple[str | None, str | None]]:
    """Each entry line's ``parse_entry``; the first bad line is a ``RecipientsFileError`` naming it."""
    for number, chunk in enumerate(data.split(b"\n"), 1):
        try:
            line = chunk.decode("utf-8").strip(" \t\r")
        except UnicodeDecodeError:
            raise RecipientsFileError(f"{path}, line {number}: not UTF-8") from None
        if not line or line.startswith("#"):
            continue
        try:
            yield parse_entry(line)
        except ValueError as error:
            raise RecipientsFileError(f"{path}, line {number}: {error}") from None


def load(path: str | Path) -> RecipientTable:
    """The entries of the recipients file; ``RecipientsFileError`` for an unreadable file or a bad line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise RecipientsFileError(f"cannot read the recipients file {path}: {error.strerror or error}") from None
    domains: set[str] = set()
    addresses: set[str] = set()
    for domain, address in _entries(data, path):
        if domain is not None:
            domains.add(domain)
        if address is not None:
            addresses.add(address)
    return RecipientTable(frozenset(domains), frozenset(addresses))


def table_of_domains(domains: Iterable[str]) -> RecipientTable:
    """``--accept-domain``'s domains (``ValueError`` for one that is none); a leading ``@`` is allowed."""
    return RecipientTable(frozenset(a_label_domain(domain.removeprefix("@").removesuffix(".")) for domain in domains))


class Recipients:
    """The recipients serve accepts: ``fixed`` (``--accept-domain``) and the file's, which SIGHUP replaces."""

    def __init__(self, fixed: RecipientTable, loaded: RecipientTable | None = None) -> None:
        self.fixed = fixed
        self.replace(loaded or RecipientTable())

    def replace(self, loaded: RecipientTable) -> None:
        """Take the entries of a reloaded file; one assignment, so a check sees the old list or the new one."""
        table = self.fixed | loaded
        self._current = (table, table.served())
        self.loaded = loaded

    def accepts(self, address: str) -> bool:
        """Whether mail for this RCPT ``address`` is taken (``postmaster``, alone or at a domain served, always is)."""
        compared = compared_address(address)
        if compared is None:
            return address.lower() == POSTMASTER  # RFC 5321 4.5.1: RCPT TO:<Postmaster>, no domain
        table, served = self._current
        local_part, _, domain = compared.rpartition("@")
        if domain in table.domains or compared in table.addresses:
            return True
        return local_part == POSTMASTER and domain in served


def unknown_user(address: str) -> Reply:
    """Postfix's answer to a recipient it has no mailbox for (RFC 3463 5.1.1: bad destination mailbox)."""
    return Reply(550, f"<{address}>: Recipient address rejected: User unknown", (5, 1, 1))


class RecipientCheck(Handler):
    """A handler part answering RCPT: ``550 5.1.1`` for a recipient ``recipients`` does not accept.

    A plain ``Handler`` (it never waits), so any adapter and any composite can hold it.
    """

    def __init__(self, recipients: Recipients) -> None:
        self.recipients = recipients

    def rcpt_to(self, session: Session, address: str, params: Params) -> Reply | None:
        return None if self.recipients.accepts(address) else unknown_user(address)


def recipient_parts(recipients: Recipients | None) -> tuple[RecipientCheck, ...]:
    """The parts a serve handler is composed with: the check, or none at all (every recipient accepted)."""
    return () if recipients is None else (RecipientCheck(recipients),)
