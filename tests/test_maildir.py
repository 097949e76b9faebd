"""The Maildir store on a real disk, on asyncio and trio: byte-exact files, one fsync of new/ per group."""

from __future__ import annotations

import errno
import inspect
import itertools
import os
import re
import resource
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from smtpwire import Reply
from smtpwire_handler import (
    STORAGE_FAILED,
    STORAGE_FULL,
    AsyncMaildirStore,
    Delivery,
    Maildir,
    Reject,
    Session,
    _group_commit,
)
from smtpwire_serve._store import MaildirHandler
from tests.driver import Driver
from tests.test_interop import MESSAGE, TIMEOUT

pytestmark = pytest.mark.anyio
TRACE = re.compile(
    rb"Return-Path: <alice@example\.org>\r\nReceived: from client\.example \(\[192\.0\.2\.7\]\)\r\n"
    rb"\tby mx\.test \(smtpwire\) with ESMTP id \w+\r\n\tfor <bob@example\.net>; [^\r\n]+\r\n"
)
BIG = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 1000  # 3.8 times 256 KiB


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def maildir(tmp_path: Path) -> Maildir:
    return Maildir(tmp_path / "maildir")


@pytest.fixture(params=["filesystem", "file"])
def sync(request: pytest.FixtureRequest) -> str:
    """How a batch is made durable: one syncfs (where the kernel reports its errors), or an fsync per file."""
    if request.param == "filesystem" and not _group_commit.filesystem_sync_available():
        pytest.skip("syncfs that reports errors needs Linux 5.8 or later")
    return str(request.param)


@pytest.fixture
def handler(maildir: Maildir, sync: str) -> MaildirHandler:
    return MaildirHandler(maildir, "mx.test", sync_filesystem=sync == "filesystem")


def data_session() -> Session:
    """A session whose client has just sent DATA for alice -> bob."""
    driver = Driver()
    driver.say("EHLO client.example", "MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>", "DATA")
    return Session(driver.conn, peer=("192.0.2.7", 40000))  # its envelope is the core's transaction


async def outcome(result: Any) -> Any:
    """What a hook answered: its hooks are plain calls that return a coroutine only when they must wait."""
    return await result if inspect.isawaitable(result) else result


async def deliver(handler: MaildirHandler, body: bytes, chunk: int = 4096) -> Reply | None:
    """DATA, the body in chunks, the end of data, as the driver calls the hooks; the reply (None: 250)."""
    session = data_session()
    refused = await outcome(handler.data_start(session))
    if refused is not None:
        return refused
    try:
        for start in range(0, len(body), chunk):
            await outcome(handler.data_chunk(session, body[start : start + chunk]))
    except Reject as reject:
        await outcome(handler.message_aborted(session, reject.reply))
        return reject.reply
    assert session.envelope is not None
    return await outcome(handler.message(session, session.envelope))


async def start_and_abort(handler: MaildirHandler, body: bytes) -> None:
    """DATA and part of the message, then the client goes away."""
    session = data_session()
    assert await outcome(handler.data_start(session)) is None
    for start in range(0, len(body), 4096):
        await outcome(handler.data_chunk(session, body[start : start + 4096]))
    await outcome(handler.message_aborted(session, None))


def stored(maildir: Maildir) -> list[bytes]:
    assert list((maildir.path / "tmp").iterdir()) == [], "a temporary file was left behind"
    return [path.read_bytes() for path in sorted((maildir.path / "new").iterdir())]


def bodies(maildir: Maildir) -> list[bytes]:
    """The stored messages (oldest first) without the trace headers, which must be there."""
    found = []
    for message in stored(maildir):
        trace = TRACE.match(message)
        assert trace, message[:300]
        found.append(message[trace.end() :])
    return found


def is_directory(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


class Disk:
    """os.fsync and os.rename, watched: what happened in which order (a global sequence), and hooks."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lock = threading.Lock()
        self.sequence = itertools.count()
        self.renamed: dict[str, int] = {}  # file name -> when its rename into new/ returned
        self.directory_fsyncs: list[tuple[int, int]] = []  # (started, ended) of each fsync of new/
        self.directory_hook: Callable[[int], None] = lambda number: None  # runs inside the fsync of new/
        self.file_hook: Callable[[], None] = lambda: None
        fsync, rename, syncfs = os.fsync, os.rename, _group_commit.sync_file_system

        def watched_fsync(fd: int) -> None:
            if not is_directory(fd):
                self.file_hook()
                fsync(fd)
                return
            with self.lock:
                number, started = len(self.directory_fsyncs), next(self.sequence)
                self.directory_fsyncs.append((started, -1))
            try:
                self.directory_hook(number)
                fsync(fd)
            finally:
                with self.lock:
                    self.directory_fsyncs[number] = (started, next(self.sequence))

        def watched_rename(source: Any, target: Any) -> None:
            rename(source, target)
            with self.lock:
                self.renamed[Path(target).name] = next(self.sequence)

        def watched_syncfs(directory: int) -> None:  # the batch's files, all at once
            self.file_hook()
            syncfs(directory)

        monkeypatch.setattr(os, "fsync", watched_fsync)
        monkeypatch.setattr(os, "rename", watched_rename)
        monkeypatch.setattr(_group_commit, "sync_file_system", watched_syncfs)

    def now(self) -> int:
        with self.lock:
            return next(self.sequence)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    return Disk(monkeypatch)


@pytest.fixture
def committed(monkeypatch: pytest.MonkeyPatch, disk: Disk) -> dict[str, int]:
    """File name -> when the group commit handed its result to the event loop, after which the handler may say 250."""
    returned: dict[str, int] = {}
    settle_all = _group_commit.settle_all

    def watched(batch: list[_group_commit.Commit]) -> None:
        for commit in batch:
            if isinstance(commit.result, Path):
                returned[commit.result.name] = disk.now()
        settle_all(batch)

    monkeypatch.setattr(_group_commit, "settle_all", watched)
    return returned


async def test_a_message_lands_byte_exact_with_trace_headers(handler: MaildirHandler, maildir: Maildir) -> None:
    assert await deliver(handler, MESSAGE) is None
    assert await deliver(handler, MESSAGE, chunk=1) is None
    assert bodies(maildir) == [MESSAGE, MESSAGE]


async def test_a_message_for_a_folder_lands_in_that_maildir_plus_plus_folder(
    handler: MaildirHandler, maildir: Maildir
) -> None:
    session = data_session()
    assert await outcome(handler.data_start(session)) is None
    await outcome(handler.data_chunk(session, MESSAGE))
    assert session.envelope is not None
    session.envelope.folder = "Junk"  # what sender authentication sets for a DMARC quarantine
    assert await outcome(handler.message(session, session.envelope)) is None
    junk = maildir.folder("Junk")
    assert junk.path == maildir.path / ".Junk" and (junk.path / "maildirfolder").is_file()
    assert stored(maildir) == [] and bodies(junk) == [MESSAGE]
    assert list((junk.path / "tmp").iterdir()) == []
    assert stat.S_IMODE(junk.path.stat().st_mode) == 0o700
    assert maildir.folder("Junk") is junk  # one folder object, one group commit of its new/


def test_folder_names_are_checked(maildir: Maildir) -> None:
    for bad in ("", "../x", ".Junk", "a/b", "Junk.", "a..b", "sp ace"):
        with pytest.raises(ValueError, match="Maildir\\+\\+ folder name"):
            maildir.folder(bad)
    assert maildir.folder("Lists.python").path == maildir.path / ".Lists.python"


async def test_a_big_message_is_written_as_it_arrives(handler: MaildirHandler, maildir: Maildir) -> None:
    session = data_session()
    assert await outcome(handler.data_start(session)) is None
    for start in range(0, len(BIG), 1000):
        await outcome(handler.data_chunk(session, BIG[start : start + 1000]))
    (partial,) = (maildir.path / "tmp").iterdir()
    assert 3 * 256 * 1024 <= partial.stat().st_size < len(BIG)  # three writes of 256 KiB and a bit; the rest waits
    assert session.envelope is not None
    assert await outcome(handler.message(session, session.envelope)) is None
    assert bodies(maildir) == [BIG]


async def test_a_small_message_costs_no_trip_to_a_worker_thread(
    handler: MaildirHandler, maildir: Maildir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its end goes to the group commit's thread; anyio's worker threads only check a Maildir in doubt."""
    trips: list[str] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(function: Callable[..., Any], *args: Any) -> Any:
        trips.append(function.__name__)
        return await run_sync(function, *args)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    assert await deliver(handler, MESSAGE, chunk=10) is None
    assert trips == ["create"]  # the first DATA checks the Maildir at once (see the last test)
    trips.clear()
    assert await deliver(handler, MESSAGE, chunk=10) is None
    await start_and_abort(handler, MESSAGE)
    assert trips == []  # nothing for DATA, the chunks, the end, or the abort of a message never written
    assert bodies(maildir) == [MESSAGE, MESSAGE]
    assert store_of(handler).group_commit.batches == 2


def store_of(handler: MaildirHandler) -> AsyncMaildirStore:
    (store,) = [part for part in handler.parts if isinstance(part, AsyncMaildirStore)]
    return store


async def test_concurrent_deliveries_share_fsyncs_of_new(
    handler: MaildirHandler, maildir: Maildir, disk: Disk, committed: dict[str, int]
) -> None:
    """Fewer fsyncs of new/ than messages, yet each commit waited for one that started after its rename."""
    disk.directory_hook = lambda number: time.sleep(0.02)  # a slow disk: renames pile up meanwhile
    replies: list[Reply | None] = []

    async def one(number: int) -> None:
        replies.append(await deliver(handler, MESSAGE + b"message %d\r\n" % number))

    async with anyio.create_task_group() as group:
        for number in range(50):
            group.start_soon(one, number)

    assert replies == [None] * 50
    assert len(stored(maildir)) == 50
    assert 1 < len(disk.directory_fsyncs) < 25 and maildir.new_sync.fsyncs == len(disk.directory_fsyncs)
    assert sorted(committed) == sorted(disk.renamed)
    for name, renamed in disk.renamed.items():
        assert any(renamed < started and ended < committed[name] for started, ended in disk.directory_fsyncs), (
            f"{name} was acknowledged without an fsync of new/ after its rename"
        )


@pytest.mark.parametrize(("error", "reply"), [(errno.EIO, STORAGE_FAILED), (errno.ENOSPC, STORAGE_FULL)])
async def test_a_failed_fsync_of_new_fails_its_whole_group_and_only_it(
    handler: MaildirHandler, maildir: Maildir, disk: Disk, error: int, reply: Reply
) -> None:
    """The first delivery's fsync of new/ is held until nine more have renamed; the second fsync fails."""
    first_started, release = threading.Event(), threading.Event()

    def directory_hook(number: int) -> None:
        if number == 0:
            first_started.set()
            assert release.wait(TIMEOUT)
        else:
            raise OSError(error, os.strerror(error))

    disk.directory_hook = directory_hook
    batches = store_of(handler).group_commit
    replies: dict[int, Reply | None] = {}

    async def one(number: int) -> None:
        replies[number] = await deliver(handler, MESSAGE + b"message %d\r\n" % number)

    async with anyio.create_task_group() as group:
        group.start_soon(one, 0)
        assert await anyio.to_thread.run_sync(first_started.wait, TIMEOUT)
        for number in range(1, 10):
            group.start_soon(one, number)
        await wait_until(lambda: batches.queued == 9)  # all nine wait for the next batch
        release.set()

    assert replies == {0: None, **{number: reply for number in range(1, 10)}}
    assert len(disk.directory_fsyncs) == 2  # one for the first, one (failed) for the batch of nine
    # As documented: the nine are in new/ (not acknowledged; their clients will retry), none in tmp/.
    assert len(stored(maildir)) == 10


async def test_a_failure_in_a_batch_fails_only_what_it_hit(
    handler: MaildirHandler, maildir: Maildir, disk: Disk, sync: str
) -> None:
    """Five deliveries wait while the first batch is on disk; the fsync of one of their files fails.

    With a syncfs per batch, the second batch's syncfs fails: which file it hit is not said, so all five fail.
    """
    first_started, release = threading.Event(), threading.Event()
    file_fsyncs = itertools.count()

    def directory_hook(number: int) -> None:
        if number == 0:
            first_started.set()
            assert release.wait(TIMEOUT)

    def file_hook() -> None:
        if next(file_fsyncs) == (3 if sync == "file" else 1):  # the third file of the second batch, or its syncfs
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    disk.directory_hook, disk.file_hook = directory_hook, file_hook
    batches = store_of(handler).group_commit
    replies: list[Reply | None] = []

    async def one(number: int) -> None:
        replies.append(await deliver(handler, MESSAGE + b"message %d\r\n" % number))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(one, 0)
        assert await anyio.to_thread.run_sync(first_started.wait, TIMEOUT)
        for number in range(1, 6):
            tasks.start_soon(one, number)
        await wait_until(lambda: batches.queued == 5)
        release.set()

    failed = 1 if sync == "file" else 5
    assert sorted(replies, key=repr) == sorted([None] * (6 - failed) + [STORAGE_FAILED] * failed, key=repr)
    assert batches.batches == 2
    assert len(disk.directory_fsyncs) == (2 if sync == "file" else 1)  # new/ once per batch that renamed any
    assert len(stored(maildir)) == 6 - failed  # and nothing left in tmp/


async def test_a_bug_in_the_commit_fails_its_batch_rather_than_hang(
    handler: MaildirHandler, maildir: Maildir, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Delivery, folder: str | None = None) -> tuple[Maildir, Path]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Delivery, "publish", broken)
    with anyio.fail_after(TIMEOUT):
        assert await deliver(handler, MESSAGE) == STORAGE_FAILED
    monkeypatch.undo()
    assert await deliver(handler, MESSAGE) is None  # the commit thread lives on
    assert bodies(maildir) == [MESSAGE]


async def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(int(TIMEOUT / 0.01)):
        if condition():
            return
        await anyio.sleep(0.01)
    raise AssertionError("the condition never held")


async def test_aborted_deliveries_leave_nothing_behind(handler: MaildirHandler, maildir: Maildir) -> None:
    await start_and_abort(handler, MESSAGE)  # the first DATA creates the file at once (see below)
    assert await deliver(handler, MESSAGE) is None
    await start_and_abort(handler, MESSAGE)  # now created only when needed: never, here
    await start_and_abort(handler, BIG[: 300 * 1024])  # 256 KiB written, then the client left
    assert bodies(maildir) == [MESSAGE]


async def test_a_file_too_large_is_452_and_removed(handler: MaildirHandler, maildir: Maildir) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # Python ignores SIGXFSZ: writes get EFBIG
    try:
        assert await deliver(handler, BIG) == STORAGE_FULL  # refused at the first 256 KiB write
        assert await deliver(handler, BIG[: 100 * 1024]) == STORAGE_FULL  # refused at the end of data
        assert await deliver(handler, MESSAGE) is None  # small still fits
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert bodies(maildir) == [MESSAGE]


@pytest.mark.parametrize(("error", "reply"), [(errno.ENOSPC, STORAGE_FULL), (errno.EIO, STORAGE_FAILED)])
async def test_a_failed_fsync_of_the_file_is_never_acknowledged(
    handler: MaildirHandler, maildir: Maildir, disk: Disk, error: int, reply: Reply
) -> None:
    def fail() -> None:
        raise OSError(error, os.strerror(error))

    disk.file_hook = fail
    assert await deliver(handler, MESSAGE) == reply
    assert await deliver(handler, BIG) == reply
    assert stored(maildir) == [] and disk.renamed == {}


async def test_an_unusable_maildir_refuses_data_at_once_while_in_doubt(
    handler: MaildirHandler, maildir: Maildir
) -> None:
    """Before the first success and after a failure DATA itself gets 451; in between the end of data does."""
    tmp = maildir.path / "tmp"
    tmp.rmdir()
    tmp.write_text("not a directory any more")
    session = data_session()
    assert await outcome(handler.data_start(session)) == STORAGE_FAILED  # nothing stored yet: checked at DATA
    tmp.unlink()
    tmp.mkdir()
    assert await deliver(handler, MESSAGE) is None
    tmp.rmdir()
    tmp.write_text("not a directory any more")
    assert await deliver(handler, MESSAGE) == STORAGE_FAILED  # 354, then 451 at the end of data
    assert await outcome(handler.data_start(data_session())) == STORAGE_FAILED  # in doubt again: checked at DATA
    tmp.unlink()
    tmp.mkdir()
    assert await deliver(handler, MESSAGE) is None
    assert len(stored(maildir)) == 2


def test_names_are_unique_and_conventional(maildir: Maildir) -> None:
    names = {maildir.unique_name() for _ in range(1000)}
    assert len(names) == 1000
    assert all(re.fullmatch(rf"\d+\.M\d+P{os.getpid()}Q\d+R[0-9a-f]{{16}}\.\S+", name) for name in names)
