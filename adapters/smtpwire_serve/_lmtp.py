"""LMTP delivery into one Maildir per recipient: written once, linked into each, answered per recipient.

``serve --lmtp --maildir DIR`` gives each recipient the Maildir
``DIR/<folder>/`` (``folder_name``: the lower-cased address, every octet
outside ``a-z 0-9 @ . - _ + =`` written ``%XX``, a leading dot too).  The
message streams into ``DIR/.spool/tmp/`` as it arrives (one file, however
many recipients); at the end of data it is fsynced once and hard-linked
into each recipient's ``new/`` (copied, fsynced and renamed there instead
when a link is impossible, as across file systems), then each ``new/`` is
fsynced, shared with the deliveries linked into it meanwhile
(``DirectorySync``).  A recipient is answered 250 only once its copy is
durable; one whose copy failed gets 451/452, the others are not affected.
A folder is made (0700, with tmp/, new/ and cur/) at its first message.

Everything here that touches the disk blocks: call it from a worker thread.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from smtpwire import Reply
from smtpwire_handler import (
    AsyncComposite,
    AsyncMaildirStore,
    Delivery,
    DirectorySync,
    Envelope,
    Maildir,
    MaybeAwaitable,
    Session,
    TransactionSlot,
    storage_reply,
)
from smtpwire_handler._maildir import FILE_MODE, fsync_directory, make_folder, make_folders

from ._authfile import Accounts, AuthFileHandler
from ._recipients import Recipients, recipient_parts
from ._store import log_accepted, warn_if_open

log = logging.getLogger("smtpwire.serve")

#: Where messages are written while they arrive (a dot: no recipient's folder can be named so).
SPOOL = ".spool"
#: What a folder name keeps as it is (after lower-casing); anything else is ``%XX``.
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789@.-_+=")
#: Names longer than this are cut and given a hash (a file name holds 255 octets).
_MAX_NAME = 200
_HEAD = 180
#: Link errors that mean "no link here, copy instead": other file system, none supported, too many links.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})

Outcome = Path | OSError


def folder_name(address: str) -> str:
    """The recipient's folder under the LMTP Maildir root: one path component, never ``.``, ``..`` or hidden.

    The address lower-cased, each character outside ``a-z 0-9 @ . - _ + =``
    written as ``%XX`` per UTF-8 octet (``%`` itself too, so two addresses
    never share a name unless they differ only in case), a leading ``.``
    as ``%2E``.  A name over 200 characters keeps its first 180 and ends
    with ``~`` and 16 hex digits of its SHA-256 (``~`` never appears
    otherwise).
    """
    lowered = address.lower()
    name = "".join(char if char in _SAFE else _escaped(char) for char in lowered)
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(lowered.encode("utf-8", "surrogatepass")).hexdigest()
        name = f"{name[:_HEAD]}~{digest[:16]}"
    return name or "%"  # an empty address (never accepted by the core) would name the root itself


def _escaped(char: str) -> str:
    return "".join(f"%{octet:02X}" for octet in char.encode("utf-8", "surrogatepass"))


class Mailboxes:
    """The LMTP Maildir root: a Maildir per recipient folder, and the spool the messages stream into."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        make_folder(self.path)  # and its missing parents, 0700 whatever the umask
        self.spool = Maildir(self.path / SPOOL)
        self._lock = threading.Lock()
        #: One group commit per recipient's new/, alive while a delivery uses it.
        self._syncs: weakref.WeakValueDictionary[str, DirectorySync] = weakref.WeakValueDictionary()

    def deliver(self, delivery: Delivery, data: bytes | bytearray, folders: Iterable[str]) -> dict[str, Outcome]:
        """Finish the message with ``data``, give each folder its durable copy; each folder's path or error.

        The spool file is removed in the end, whatever happened: the copies
        are links to it, or copies of it.
        """
        wanted = list(dict.fromkeys(folders))
        try:
            delivery.seal(data)
        except OSError as error:
            delivery.abort()
            return dict.fromkeys(wanted, error)
        try:
            outcomes = {folder: self._placed(delivery, folder) for folder in wanted}
            for folder, outcome in outcomes.items():  # linked into every new/ first: one journal commit serves most
                if isinstance(outcome, Path):
                    outcomes[folder] = self._synced(folder, outcome)
        finally:
            delivery.abort()
        return outcomes

    def _placed(self, delivery: Delivery, folder: str) -> Outcome:
        try:
            box = self.maildir(folder)
            target = box / "new" / delivery.name
            try:
                os.link(delivery.tmp, target)
            except OSError as error:
                if error.errno not in _NO_LINK:
                    raise
                _copy(delivery.tmp, box / "tmp" / delivery.name, target)
        except OSError as error:
            return error
        return target

    def _synced(self, folder: str, path: Path) -> Outcome:
        with self._lock:
            sync = self._syncs.get(folder)
            if sync is None:
                sync = self._syncs[folder] = DirectorySync(self.path / folder / "new")
        try:
            sync.sync()
        except OSError as error:
            return error
        return path

    def maildir(self, folder: str) -> Path:
        """``DIR/folder``, made a Maildir (0700) durably if it is not one yet."""
        box = self.path / folder
        if (box / "new").is_dir():
            return box
        make_folders(box)
        fsync_directory(box)
        fsync_directory(self.path)
        return box


def _copy(source: Path, tmp: Path, target: Path) -> None:
    """Where no link can be made: copy into tmp/, fsync, rename into new/ (the caller fsyncs new/)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        with open(source, "rb") as original, open(fd, "wb", closefd=False) as copy:
            shutil.copyfileobj(original, copy)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class _Copies:
    """What storing a message for every recipient came to: each folder's outcome, and the size stored."""

    outcomes: dict[str, Outcome]
    size: int  # with the trace headers, as stored


class LmtpMaildirStore(AsyncMaildirStore):
    """``AsyncMaildirStore`` for LMTP: one stored copy per recipient folder, and one answer per recipient.

    The first recipient's ``deliver`` makes the one trip to a worker thread
    that stores every copy (see ``Mailboxes.deliver``); each recipient is then
    answered from its own outcome.
    """

    def __init__(self, mailboxes: Mailboxes, hostname: str) -> None:
        super().__init__(mailboxes.spool, hostname)
        self.mailboxes = mailboxes
        self._copies = TransactionSlot[_Copies]("the LMTP copies")

    def deliver(self, session: Session, envelope: Envelope, recipient: str) -> MaybeAwaitable[Reply | None]:
        """The first recipient waits for every copy to be stored; the others are answered inline."""
        copies = self._copies.get(session, None)
        if copies is None:
            return self._store_then_answer(session, envelope, recipient)
        return self._answer(session, envelope, recipient, copies)

    async def _store_then_answer(self, session: Session, envelope: Envelope, recipient: str) -> Reply | None:
        copies = await self._store(session, envelope)
        self._copies.set(session, copies)
        return self._answer(session, envelope, recipient, copies)

    @staticmethod
    def _answer(session: Session, envelope: Envelope, recipient: str, copies: _Copies) -> Reply | None:
        outcome = copies.outcomes[folder_name(recipient)]
        if isinstance(outcome, OSError):
            log.error("session %s: storing the message for <%s> failed: %s", session.id, recipient, outcome)
            return storage_reply(outcome)
        where = f"stored={outcome.parent.parent.name}/new/{outcome.name}"
        log_accepted(session, envelope, copies.size, where, [recipient])
        return None

    async def _store(self, session: Session, envelope: Envelope) -> _Copies:
        delivery, rest = self.unwritten(session)
        folders = [folder_name(recipient) for recipient in envelope.rcpt_tos]
        outcomes = await anyio.to_thread.run_sync(self.mailboxes.deliver, delivery, rest, folders)
        self.proven = any(isinstance(outcome, Path) for outcome in outcomes.values())  # the spool took it
        return _Copies(outcomes, delivery.size)


class LmtpMaildirHandler(AuthFileHandler, AsyncComposite):
    """serve's LMTP delivery: the AUTH file's hooks and an ``LmtpMaildirStore`` (a part, as in ``MaildirHandler``)."""

    def __init__(
        self,
        mailboxes: Mailboxes,
        hostname: str,
        accounts: Accounts | None = None,
        recipients: Recipients | None = None,
    ) -> None:
        self.accounts = accounts
        warn_if_open(mailboxes.spool)
        super().__init__(LmtpMaildirStore(mailboxes, hostname), *recipient_parts(recipients))
