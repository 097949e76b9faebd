"""Every code block of README.md and docs/ runs as its reader would run it, or is skipped with its reason.

Sybil reads the pages (one region per fenced block, a namespace per page) and runs the plain
Python blocks; what else a block needs is declared in the tables below, by page and a piece of
its text, so editing a page never silently drops a check:

- a plain Python block runs in its page's namespace after the page's earlier plain blocks, in a
  folder of the page's own holding ``cert.pem`` and ``key.pem`` (a trustme certificate for
  localhost); a block written as a doctest is checked as one;
- a block that runs a server (``SERVERS``) runs as ``python example.py`` in such a folder, with
  the ports 8025 and 8465 replaced by free ones; the test sends it mail with smtplib, checks
  what arrived and stops it; a block that talks to such a server (``CLIENTS``) runs against it;
- each shell command (``COMMANDS``) runs for real, briefly, on free ports and in a temporary
  folder, or is skipped with the reason it cannot run here;
- a block that is not code for a shell or Python (``NOT_CODE``: sample output, another
  program's configuration) is reported as skipped, saying what it is.

Also here: the README's Python under ``mypy --strict``, claims about sizes checked, and the manual
built as a site with ``mkdocs build --strict`` (docs/mkdocs/mkdocs.yml).
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import mailbox
import os
import re
import shlex
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from sybil import Document, Example, Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").rglob("*.md"))]
PORT_PLAIN, PORT_TLS = "8025", "8465"  # the ports the pages use, replaced by free ones
START_TIMEOUT = 15.0  # seconds for an example server to listen
STOP_TIMEOUT = 10.0


# -- reading the pages with Sybil ------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced block of a page, as Sybil found it."""

    page: str
    line: int
    language: str
    source: str
    example: Example = field(compare=False, repr=False)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def is_doctest(self) -> bool:
        return self.source.lstrip().startswith(">>>")


def every_fenced_block(document: Document) -> Iterator[Any]:
    """A Sybil parser: every fenced block, whatever its language; the tests below decide what to do."""
    lexer = FencedCodeBlockLexer(language=r"[\w-]*", mapping={"language": "language", "source": "source"})
    for region in lexer(document):
        region.parsed = region.lexemes["source"]
        region.evaluator = PythonEvaluator()
        yield region


SYBIL = Sybil(parsers=[every_fenced_block], path=str(ROOT))


def read_page(page: str) -> list[Block]:
    document = SYBIL.parse(ROOT / page)
    return [
        Block(page, example.line, str(example.region.lexemes["language"]), str(example.parsed), example)
        for example in document.examples()
    ]


BLOCKS = {page: read_page(page) for page in PAGES}
ALL_BLOCKS = [block for blocks in BLOCKS.values() for block in blocks]


def find_block(page: str, needle: str) -> Block:
    (block,) = [block for block in BLOCKS[page] if needle in block.source]
    return block


# -- a folder per page, with a certificate ---------------------------------------------


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


def make_folder(ca: trustme.CA, folder: Path) -> Path:
    """``cert.pem`` and ``key.pem`` (localhost, 127.0.0.1, ::1) in a folder, as the examples expect."""
    folder.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    cert.cert_chain_pems[0].write_to_path(folder / "cert.pem")
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(folder / "cert.pem", append=True)
    cert.private_key_pem.write_to_path(folder / "key.pem")
    return folder


@pytest.fixture
def folder(ca: trustme.CA, tmp_path: Path) -> Path:
    return make_folder(ca, tmp_path / "work")


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


# -- servers the examples start ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Running:
    """An example's server process, its folder and the free ports that replaced 8025 and 8465."""

    process: subprocess.Popen[bytes]
    folder: Path
    port: int
    tls_port: int

    def output(self) -> str:
        return (self.folder / "stdout.txt").read_text(errors="replace")

    def errors(self) -> str:
        return (self.folder / "stderr.txt").read_text(errors="replace")


def localize(text: str, port: int, tls_port: int) -> str:
    """The page's ports replaced by free ones (whole numbers only)."""
    text = re.sub(rf"\b{PORT_PLAIN}\b", str(port), text)
    return re.sub(rf"\b{PORT_TLS}\b", str(tls_port), text)


def wait_until_listening(process: subprocess.Popen[bytes], address: str | tuple[str, int], folder: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the example server exited ({process.returncode}):\n{(folder / 'stderr.txt').read_text()}")
        with socket.socket(family) as probe, contextlib.suppress(OSError):
            probe.settimeout(1)
            probe.connect(address)
            return
        time.sleep(0.05)
    pytest.fail(f"the example server did not listen on {address} within {START_TIMEOUT} s")


@contextlib.contextmanager
def started(
    argv: list[str], folder: Path, port: int, tls_port: int, *, address: str | None = None, stop: int = signal.SIGTERM
) -> Iterator[Running]:
    """Run a server command in ``folder`` until the block ends, then stop it (``stop``, then SIGKILL)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(folder / "stdout.txt", "wb") as out, open(folder / "stderr.txt", "wb") as err:
        process = subprocess.Popen(argv, cwd=folder, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
    try:
        wait_until_listening(process, address or ("127.0.0.1", port), folder)
        yield Running(process, folder, port, tls_port)
    finally:
        if process.poll() is None:
            process.send_signal(stop)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


def smtpwire_command() -> list[str]:
    """The ``smtpwire`` console script, or the module when the script is not on PATH."""
    script = shutil.which("smtpwire")
    return [script] if script else [sys.executable, "-m", "smtpwire_serve"]


def send(
    port: int, *, subject: str = "hi", context: ssl.SSLContext | None = None, login: tuple[str, str] | None = None
) -> None:
    """One message to 127.0.0.1:port with smtplib: STARTTLS first when a context is given, then AUTH."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        if context is not None:
            client.starttls(context=context)
        if login is not None:
            client.login(*login)
        client.sendmail("me@example.org", ["you@example.org"], f"Subject: {subject}\r\n\r\nhello\r\n")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s for {what}")
        time.sleep(0.05)


def files_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob("*") if path.is_file()) if folder.is_dir() else []


# -- Python blocks that run a server: started, sent mail, checked -----------------------


@dataclass(frozen=True)
class ServerExample:
    """A Python block that runs a server: after the page's blocks named in ``joins``, as the reader joins them."""

    check: Callable[[Running, ssl.SSLContext], None]
    joins: tuple[str, ...] = ()
    stop: int = signal.SIGTERM


def check_readme_auth(server: Running, context: ssl.SSLContext) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo()
        assert not client.has_extn("auth"), "AUTH must not be offered before STARTTLS"
        client.mail("me@example.org")
        assert client.rcpt("you@example.org")[0] == 503  # MAIL was refused (530): not authenticated
    send(server.port, subject="from tim", context=context, login=("tim", "tanstaaf"))
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.starttls(context=context)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("tim", "wrong")
    (stored,) = files_in(server.folder / "inbox")
    assert b"Subject: from tim" in stored.read_bytes()


def check_printed(server: Running, context: ssl.SSLContext) -> None:
    send(server.port, subject="printed")
    wait_for(lambda: "you@example.org" in server.output(), "the message to be printed")
    assert "me@example.org" in server.output()


def check_printed_message(server: Running, context: ssl.SSLContext) -> None:
    send(server.port, subject="printed")
    wait_for(lambda: "Subject: printed" in server.output(), "the message to be printed")


def check_inbox_with_tls(server: Running, context: ssl.SSLContext) -> None:
    send(server.port, subject="plain")
    send(server.port, subject="starttls", context=context)
    with smtplib.SMTP_SSL("127.0.0.1", server.tls_port, timeout=10, context=context) as client:
        client.sendmail("me@example.org", ["you@example.org"], "Subject: implicit\r\n\r\nhello\r\n")
    stored = b"".join(path.read_bytes() for path in files_in(server.folder / "inbox"))
    assert all(f"Subject: {subject}".encode() in stored for subject in ("plain", "starttls", "implicit"))


def check_mbox(server: Running, context: ssl.SSLContext) -> None:
    refused = pytest.raises(smtplib.SMTPRecipientsRefused)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client, refused:
        client.sendmail("me@example.org", ["you@example.net"], "Subject: elsewhere\r\n\r\nhello\r\n")
    send(server.port, subject="one")
    send(server.port, subject="From here on", context=context)
    with smtplib.SMTP_SSL("127.0.0.1", server.tls_port, timeout=10, context=context) as client:
        client.sendmail("me@example.org", ["you@example.org"], "Subject: three\r\n\r\nFrom the start\r\n")
    messages = list(mailbox.mbox(server.folder / "inbox.mbox"))
    assert [message["Subject"] for message in messages] == ["one", "From here on", "three"]
    assert str(messages[2].get_payload()).strip() == ">From the start"  # quoted: a line starting "From " would split it


def check_xstats(server: Running, context: ssl.SSLContext) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo()
        assert client.has_extn("xstats")
        client.sendmail("a@example.org", ["b@example.net"], "Subject: hi\r\n\r\nhello\r\n")
        assert client.docmd("XSTATS") == (250, b"2.0.0 1 message(s) delivered in this session")


def check_memorybio_example(server: Running, context: ssl.SSLContext) -> None:
    send(server.port, subject="memorybio", context=context)
    wait_for(lambda: "Subject: memorybio" in server.output(), "the message to be printed")


SERVERS: dict[tuple[str, str], ServerExample] = {
    ("README.md", "class Handler(smtpwire_anyio.AsyncHandler)"): ServerExample(check_readme_auth),
    ("docs/core.md", "def serve_one("): ServerExample(check_printed_message),
    ("docs/anyio.md", "anyio.run(server.serve)"): ServerExample(check_printed),
    ("docs/asyncio.md", "smtpwire_asyncio.run("): ServerExample(check_inbox_with_tls),
    ("docs/blocking.md", "server.serve_forever()"): ServerExample(check_mbox, stop=signal.SIGINT),
    ("docs/handlers.md", "class XStats(smtpwire.Extension)"): ServerExample(check_xstats),
    ("docs/handlers.md", "async def serve_session("): ServerExample(check_printed_message),
}

#: Blocks that talk to the server of another block of their page: (page, needle) -> that block's needle.
CLIENTS: dict[tuple[str, str], str] = {
    ("docs/handlers.md", '>>> client = smtplib.SMTP("127.0.0.1", 8025'): "class XStats(smtpwire.Extension)",
}


def python_script(block: Block, example: ServerExample) -> str:
    joined = [find_block(block.page, needle).source for needle in example.joins]
    return "\n\n".join([*joined, block.source])


@contextlib.contextmanager
def server_of(block: Block, folder: Path) -> Iterator[Running]:
    key = declared(SERVERS, block)
    assert key is not None
    example = SERVERS[key]
    port, tls_port = free_port(), free_port()
    (folder / "example.py").write_text(localize(python_script(block, example), port, tls_port))
    with started([sys.executable, "example.py"], folder, port, tls_port, stop=example.stop) as server:
        yield server


def run_doctest(source: str, name: str, globs: dict[str, Any]) -> None:
    test = doctest.DocTestParser().get_doctest(source, globs, name, name, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    failures: list[str] = []
    try:
        runner.run(test, out=failures.append)
    finally:
        client = test.globs.get("client")
        if isinstance(client, smtplib.SMTP) and client.sock is not None:
            client.close()
    assert not failures, "".join(failures)
    assert runner.summarize(verbose=False).attempted == len(test.examples)


# -- plain Python blocks: in the page's namespace, in order ------------------------------


def check_auth_hooks(namespace: dict[str, Any]) -> None:
    import anyio

    import smtpwire

    handler = namespace["Handler"]()
    right = smtpwire.AuthCredentials("PLAIN", "", "tim", "tanstaaf")
    wrong = smtpwire.AuthCredentials("PLAIN", "", "tim", "guess")
    unknown = smtpwire.AuthCredentials("PLAIN", "", "tom", "tanstaaf")
    assert anyio.run(handler.authenticate, None, right) is True
    assert anyio.run(handler.authenticate, None, wrong) is False
    assert anyio.run(handler.authenticate, None, unknown) is False
    assert namespace["options"].config.require_auth
    assert len(namespace["SALT_KEY"]) == 32 and namespace["load_or_create_secret"]() == namespace["SALT_KEY"]


def signup(address: str, smtp: tuple[str, int], ssl_context: ssl.SSLContext | None = None) -> None:
    """The "your code" of the testing page: sends a welcome mail (over STARTTLS when given a context)."""
    with smtplib.SMTP(*smtp, timeout=10) as client:
        if ssl_context is not None:
            client.starttls(context=ssl_context)
        client.sendmail("app@example.org", [address], "Subject: Welcome\r\n\r\nHi Bob\r\n")


def check_welcome_test(namespace: dict[str, Any]) -> None:
    from smtpwire_testing import MailServer

    namespace["signup"] = signup
    with MailServer() as server:
        namespace["test_welcome_mail"](server)


def check_faults(namespace: dict[str, Any]) -> None:
    """Every fault the page lists is one a real server takes as written."""
    from smtpwire_testing import MailServer

    with MailServer() as server:
        namespace["test_failures"](server)


def check_unittest_example(namespace: dict[str, Any]) -> None:
    import unittest

    namespace["signup"] = signup
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(namespace["SignupTest"])
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
    assert result.wasSuccessful() and result.testsRun == 1, result.errors + result.failures


#: Checks after a plain block ran, on what it left in the page's namespace.
AFTER: dict[tuple[str, str], Callable[[dict[str, Any]], None]] = {
    ("docs/handlers.md", "def load_or_create_secret("): check_auth_hooks,
    ("docs/index.md", "def test_welcome_mail(mail_server)"): check_welcome_test,
    ("docs/testing.md", "def test_welcome_mail(mail_server)"): check_welcome_test,
    ("docs/testing.md", "class SignupTest(unittest.TestCase)"): check_unittest_example,
    ("docs/testing.md", "def test_failures(mail_server)"): check_faults,
}


class PageRun:
    """A page's plain Python blocks run so far, in one namespace (Sybil's document namespace)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.done = 0

    def run_up_to(self, page: str, upto: Block) -> None:
        """Run the page's plain blocks before ``upto`` not yet run, then ``upto`` itself."""
        with contextlib.chdir(self.folder):
            for block in BLOCKS[page][self.done :]:
                if block is not upto and (not is_plain_python(block) or declared(KNOWN_FAILING, block, required=False)):
                    continue
                run_plain(block)
                if block is upto:
                    break
            self.done = BLOCKS[page].index(upto) + 1


def run_plain(block: Block) -> None:
    namespace = block.example.namespace
    if block.is_doctest:
        run_doctest(block.source, block.id, namespace)
    else:
        block.example.evaluate()
    key = declared(AFTER, block, required=False)
    if key is not None:
        AFTER[key](namespace)


@pytest.fixture(scope="module")
def page_runs(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, PageRun]:
    return {page: PageRun(make_folder(ca, tmp_path_factory.mktemp("page"))) for page in PAGES}


# -- shell commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A shell command of a page: ``run(command, folder, context)`` runs it for real, or ``skip`` says why not."""

    run: Callable[[str, Path, ssl.SSLContext], None] | None = None
    skip: str = ""


def shell_commands(block: Block) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and ``$ `` prompts dropped, ``&&`` split."""
    text = block.source.replace("\\\n", " ")
    commands: list[str] = []
    for line in text.splitlines():
        if block.language == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        words = shlex.split(line, comments=True)
        if not words:
            continue
        command = " ".join(shlex.quote(word) if word != "&&" else word for word in words)
        commands.extend(part.strip() for part in command.split(" && "))
    return commands


def serve_argv(command: str, folder: Path, port: int, tls_port: int) -> tuple[list[str], str | None]:
    """``smtpwire serve ...`` as printed, on free ports and with its absolute paths moved into ``folder``."""
    command = localize(command, port, tls_port)
    command = command.replace("/run/smtpwire/", f"{folder}/run/").replace("/var/mail/", f"{folder}/mail/")
    command = command.replace("0.0.0.0:25", f"127.0.0.1:{port}")
    (folder / "run").mkdir(exist_ok=True)
    words = shlex.split(command)
    assert words[:2] == ["smtpwire", "serve"], command
    argv = [*smtpwire_command(), *words[1:]]
    if "--listen" not in words:
        argv += ["--listen", f"127.0.0.1:{port}"]
    unix = next((word[5:] for word in words if word.startswith("unix:")), None)
    return argv, unix


def stored_messages(folder: Path, argv: list[str]) -> list[bytes]:
    maildir = Path(folder, argv[argv.index("--maildir") + 1]) if "--maildir" in argv else folder / "maildir"
    return [path.read_bytes() for path in maildir.rglob("new/*")]


def serve_and_send(command: str, folder: Path, context: ssl.SSLContext) -> None:
    """Start ``smtpwire serve ...``, send it a message as its options ask (LMTP, STARTTLS, AUTH), find it stored."""
    port, tls_port = free_port(), free_port()
    argv, unix = serve_argv(command, folder, port, tls_port)
    if "--auth-file" in argv:
        add_user(argv[argv.index("--auth-file") + 1], folder)
    with started(argv, folder, port, tls_port, address=unix):
        unverified = ssl._create_unverified_context()  # --self-signed: a throwaway certificate
        if "--lmtp" in argv:
            with smtplib.LMTP(unix or "127.0.0.1", 0 if unix else port, timeout=10) as client:
                client.sendmail("me@example.org", ["you@example.org"], "Subject: lmtp\r\n\r\nhello\r\n")
        else:
            secure = "--require-starttls" in argv or "--require-auth" in argv
            login = ("alice", "wonderland") if "--require-auth" in argv else None
            send(port, subject="served", context=unverified if secure else None, login=login)
        if "--tls-listen" in argv:
            with smtplib.SMTP_SSL("127.0.0.1", tls_port, timeout=10, context=unverified) as client:
                client.sendmail("me@example.org", ["you@example.org"], "Subject: served\r\n\r\nhello\r\n")
        wait_for(lambda: bool(stored_messages(folder, argv)), "the message in the Maildir")
    assert all(b"hello" in message for message in stored_messages(folder, argv))


def add_user(auth_file: str, folder: Path) -> None:
    """``smtpwire passwd FILE alice``, the password given twice on a pipe, as the manual says it may be."""
    result = subprocess.run(
        [*smtpwire_command(), "passwd", auth_file, "alice"],
        cwd=folder,
        input="wonderland\nwonderland\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def run_passwd(command: str, folder: Path, context: ssl.SSLContext) -> None:
    words = shlex.split(command)
    add_user(words[2], folder)
    assert (folder / words[2]).read_text().count(":SCRAM-SHA-256$") == 1


def readme_serve(command: str, folder: Path, context: ssl.SSLContext) -> None:
    """README's ``smtpwire serve``: 127.0.0.1:8025 (a free port here) into ``./maildir/new/``."""
    port = free_port()
    argv, _ = serve_argv(command, folder, port, port)
    with started(argv, folder, port, port):
        send(port, subject="first")
        wait_for(lambda: len(list((folder / "maildir" / "new").glob("*"))) == 1, "the message in ./maildir/new/")


def readme_send(command: str, folder: Path, context: ssl.SSLContext) -> None:
    """One of README's "Send the first message" commands, as printed, to README's ``smtpwire serve``."""
    program = shlex.split(command)[0]
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed (CI installs it)")
    port = free_port()
    (serve,) = [line for line in shell_commands(find_block("README.md", "&& smtpwire serve")) if "serve" in line]
    argv, _ = serve_argv(serve, folder, port, port)
    with started(argv, folder, port, port):
        result = subprocess.run(
            localize(command, port, port), shell=True, cwd=folder, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stdout + result.stderr
        wait_for(lambda: len(list((folder / "maildir" / "new").glob("*"))) == 1, "the message in ./maildir/new/")


def lmtp_load(command: str, folder: Path, context: ssl.SSLContext) -> None:
    """Postfix's smtp-source, as printed, against the LMTP page's own ``smtpwire serve --lmtp``: every copy stored."""
    if shutil.which("smtp-source") is None:
        pytest.skip("Postfix's smtp-source is not installed (CI installs it)")
    (serve,) = [block for block in BLOCKS["docs/lmtp.md"] if block.source.startswith("smtpwire serve --lmtp")]
    (serve_command,) = shell_commands(serve)
    argv, unix = serve_argv(serve_command, folder, 0, 0)
    words = shlex.split(command.replace("/run/smtpwire/", f"{folder}/run/"))
    expected = int(words[words.index("-m") + 1]) * int(words[words.index("-r") + 1])
    with started(argv, folder, 0, 0, address=unix):
        result = subprocess.run(words, cwd=folder, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    assert len(stored_messages(folder, argv)) == expected


def proxy_untrusted_client(command: str, folder: Path, context: ssl.SSLContext) -> None:
    """The PROXY page's command: a client outside the trusted networks talks plain SMTP, ``PROXY`` is unknown."""
    port = free_port()
    argv, _ = serve_argv(command, folder, port, port)
    with started(argv, folder, port, port):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            assert client.docmd("PROXY", "TCP4 192.0.2.1 198.51.100.2 56324 25")[0] == 500
        send(port, subject="not proxied")
        wait_for(lambda: bool(stored_messages(folder, argv)), "the message in the Maildir")


def run_memorybio_example(command: str, folder: Path, context: ssl.SSLContext) -> None:
    """The MemoryBIO asyncio example as printed, on a free port, sent a message over STARTTLS."""
    port = free_port()
    words = shlex.split(localize(command, port, port))
    assert words[0] == "python", command
    with started([sys.executable, str(ROOT / words[1]), *words[2:]], folder, port, port, stop=signal.SIGINT) as server:
        check_memorybio_example(server, context)


INSTALL = Command(skip="an install step: the test run is that installation")
ROOT_AND_POSTFIX = "needs root, a system user and a running Postfix (tests/test_serve_lmtp.py runs a throwaway one)"

#: Every shell command of the pages: (page, how the command starts) -> what the test does with it.
COMMANDS: dict[tuple[str, str], Command] = {
    ("README.md", "pip install -e '.[cli]'"): INSTALL,
    ("README.md", "smtpwire serve"): Command(readme_serve),
    ("README.md", "swaks --server 127.0.0.1"): Command(readme_send),
    ("README.md", "python -c 'import smtplib"): Command(readme_send),
    ("README.md", "pip install -e '.[test]'"): INSTALL,
    ("README.md", "python -m pytest"): Command(skip="the test suite itself"),
    ("README.md", "pip install -e '.[docs]'"): INSTALL,
    ("README.md", "mkdocs build --strict"): Command(
        skip="run by test_the_manual_builds_with_mkdocs_strict, as printed"
    ),
    ("docs/authentication.md", "smtpwire serve --verify all --hostname"): Command(
        skip="asks the system's resolvers, which no test may use (tests/test_serve_verify.py runs a local DNS server)"
    ),
    ("docs/authentication.md", "smtpwire serve --verify all --dns-resolver"): Command(
        skip="needs a resolver on 127.0.0.1:53 (tests/test_serve_verify.py runs serve against a local DNS server)"
    ),
    ("docs/filters.md", "smtpwire serve --milter"): Command(
        skip="needs rspamd and OpenDKIM listening (tests/test_milter_interop.py runs both behind serve)"
    ),
    ("docs/filters.md", "smtpwire serve --policy-service"): Command(
        skip="needs a policy server listening (tests/test_policy_interop.py runs postgrey)"
    ),
    ("docs/filters.md", "smtpwire serve --xclient-from"): Command(
        skip="a proxy's back end: tests/test_xclient_adapters.py and test_xclient_interop.py send it XCLIENT"
    ),
    ("docs/http.md", "smtpwire serve --deliver-http https://"): Command(
        skip="needs the application's HTTPS endpoint and its secret (tests/test_http_spool.py runs one)"
    ),
    ("docs/http.md", "smtpwire serve --deliver-http http://127.0.0.1:8000"): Command(
        skip="needs an application on port 8000 (tests/test_http_delivery.py runs one)"
    ),
    ("docs/operating.md", "smtpwire serve --metrics"): Command(
        skip="four workers and a metrics port (tests/test_metrics.py scrapes serve --metrics --workers 2)"
    ),
    ("docs/index.md", "pip install -e '.[cli,testing]'"): INSTALL,
    ("docs/index.md", "smtpwire serve"): Command(readme_serve),
    ("docs/index.md", "swaks --server 127.0.0.1"): Command(readme_send),
    ("docs/index.md", "python -c 'import smtplib"): Command(readme_send),
    ("docs/lmtp.md", "smtpwire serve --lmtp"): Command(serve_and_send),
    ("docs/lmtp.md", "install -d -o smtpwire"): Command(skip=ROOT_AND_POSTFIX),
    ("docs/lmtp.md", "usermod -a -G smtpwire postfix"): Command(skip=ROOT_AND_POSTFIX),
    ("docs/lmtp.md", "sudo -u smtpwire smtpwire serve"): Command(skip=ROOT_AND_POSTFIX),
    ("docs/lmtp.md", "smtp-source -L"): Command(lmtp_load),
    ("docs/memorybio.md", "python docs/examples/memorybio_asyncio.py"): Command(run_memorybio_example),
    ("docs/performance.md", "pip install -e '.[test,bench]'"): INSTALL,
    ("docs/performance.md", "apt-get install postfix"): Command(skip="a system package install (root, network)"),
    ("docs/performance.md", "python tests/benchmarks/bench_servers.py"): Command(skip="a benchmark of 3 to 15 minutes"),
    ("docs/performance.md", "pip install -e '.[bench]'"): INSTALL,
    ("docs/performance.md", "python tests/benchmarks/bench_core.py"): Command(skip="a benchmark of about 3 minutes"),
    ("docs/performance.md", "tests/benchmarks/peers/install.sh"): Command(
        skip="a system package and npm install (root, network), for the benchmark only"
    ),
    ("docs/proxy.md", "smtpwire serve --listen 0.0.0.0:25 --proxy-protocol"): Command(proxy_untrusted_client),
    ("docs/serve.md", "smtpwire serve --listen 0.0.0.0:25 --listen '[::]:25'"): Command(
        skip="needs a real certificate in /etc/ssl (--tls-cert /etc/ssl/mx.pem)"
    ),
    ("docs/serve.md", "smtpwire serve --lmtp"): Command(serve_and_send),
    ("docs/serve.md", "smtpwire serve --self-signed --auth-file users --require-auth"): Command(serve_and_send),
    ("docs/serve.md", "smtpwire serve --self-signed --tls-listen"): Command(serve_and_send),
    ("docs/serve.md", "smtpwire passwd users alice"): Command(run_passwd),
    ("docs/serve.md", "smtpwire passwd /etc/smtpwire/users"): Command(
        skip="a synopsis ([--iterations 4096] is optional) writing into /etc"
    ),
    ("docs/serve.md", "smtpwire serve --tls-cert mx.pem"): Command(
        skip="needs a real certificate (mx.pem) and the auth file in /etc"
    ),
    ("docs/serve.md", "smtpwire serve"): Command(serve_and_send),
    ("docs/testing.md", "pip install 'smtpwire[testing]'"): INSTALL,
    ("docs/testing.md", "pip install -e '.[testing]'"): INSTALL,
}


def command_rule(page: str, command: str) -> tuple[str, str]:
    """The rule of ``COMMANDS`` for a command: the longest declared start it has on its page."""
    starts = [key for key in COMMANDS if key[0] == page and command.startswith(key[1])]
    assert starts, f"{page}: the command {command!r} is not declared in COMMANDS (run it, or say why not)"
    return max(starts, key=lambda key: len(key[1]))


SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
COMMAND_CASES = [
    (block, index, command)
    for block in ALL_BLOCKS
    if block.language in SHELL_LANGUAGES
    for index, command in enumerate(shell_commands(block))
]


# -- blocks that are not code, and code that is known not to run ----------------------------

#: Fenced blocks that are neither Python nor shell: (page, a piece of the block) -> what it is.
NOT_CODE: dict[tuple[str, str], str] = {
    ("docs/authentication.md", "Return-Path: <alice@example.org>"): "a sample of the header fields on top",
    ("docs/authentication.md", "# /etc/unbound"): "Unbound's configuration",
    ("docs/filters.md", "xclient on;"): "nginx's configuration (tests/test_xclient_interop.py runs a real nginx)",
    ("docs/lmtp.md", "Return-Path: <alice@example.org>"): "a sample of the trace header fields",
    ("docs/lmtp.md", "# main.cf"): "Postfix's configuration (tests/test_serve_lmtp.py drives a throwaway Postfix)",
    ("docs/performance.md", "Python 3.11.7 (CPython) on Linux"): "the benchmark's printed set-up line",
    ("docs/performance.md", "Python 3.11.7 (CPython) on x86_64"): "the benchmark's printed set-up line",
    ("docs/proxy.md", "backend mx"): "HAProxy's configuration (tests/test_proxy_interop.py runs a real HAProxy)",
    ("docs/serve.md", "Return-Path: <alice@example.org>"): "a sample of the trace header fields",
    ("docs/serve.md", "X-Smtpwire-DSN: RET=HDRS"): "a sample of the DSN header fields",
    (
        "docs/serve.md",
        "Error: cannot read --tls-cert",
    ): "sample error lines (tests/test_cli.py and tests/test_serve_ops.py check them)",
    ("docs/serve.md", '{"time": "2026-'): "a sample JSON log record",
    ("docs/serve.md", "# user:SCRAM-SHA-256$iterations"): "a sample line of the auth file",
    ("docs/testing.md", "AssertionError: waited 5.0 s"): "a sample failure message",
    ("docs/testing.md", "smtpwire transcript 127.0.0.1"): "a sample transcript section of a test report",
}

#: Python blocks that are not run: (page, a piece of the block) -> why.
PYTHON_SKIPS: dict[tuple[str, str], str] = {
    ("docs/testing.md", "mail_server.outbox.wait_for(2, timeout=5)"): (
        "a list of alternatives inside a test, not a sequence: it waits for 2 messages, then asserts none arrived"
    ),
}

#: Blocks that fail as printed, run and expected to fail (none now: a fixed one turns its entry red).
KNOWN_FAILING: dict[tuple[str, str], str] = {}


def declared(table: dict[tuple[str, str], Any], block: Block, *, required: bool = True) -> tuple[str, str] | None:
    keys = [key for key in table if key[0] == block.page and key[1] in block.source]
    assert len(keys) <= 1, f"{block.id} matches several declarations: {keys}"
    assert keys or not required, f"{block.id} is not declared"
    return keys[0] if keys else None


def is_plain_python(block: Block) -> bool:
    return block.language == "python" and not any(
        declared(table, block, required=False) for table in (SERVERS, CLIENTS, PYTHON_SKIPS)
    )


def block_params() -> list[Any]:
    params = []
    for block in ALL_BLOCKS:
        if block.language in SHELL_LANGUAGES:
            continue
        failing = declared(KNOWN_FAILING, block, required=False)
        marks = [pytest.mark.xfail(reason=KNOWN_FAILING[failing], strict=True)] if failing else []
        params.append(pytest.param(block, id=block.id, marks=marks))
    return params


# -- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("block", block_params())
def test_block(block: Block, page_runs: dict[str, PageRun], folder: Path, client_context: ssl.SSLContext) -> None:
    if block.language != "python":
        not_code = declared(NOT_CODE, block, required=False)
        assert not_code, f"{block.id}: a ```{block.language} block: run it, or declare it in NOT_CODE"
        pytest.skip(f"not code: {NOT_CODE[not_code]}")
    skip = declared(PYTHON_SKIPS, block, required=False)
    if skip:
        pytest.skip(PYTHON_SKIPS[skip])
    server_example = declared(SERVERS, block, required=False)
    if server_example:
        with server_of(block, folder) as server:
            SERVERS[server_example].check(server, client_context)
        return
    client = declared(CLIENTS, block, required=False)
    if client:
        with server_of(find_block(block.page, CLIENTS[client]), folder) as server:
            run_doctest(localize(block.source, server.port, server.tls_port), block.id, {"smtplib": smtplib})
        return
    page_runs[block.page].run_up_to(block.page, block)


@pytest.mark.parametrize(
    ("block", "command"),
    [pytest.param(block, command, id=f"{block.id}:{index + 1}") for block, index, command in COMMAND_CASES],
)
def test_command(block: Block, command: str, folder: Path, client_context: ssl.SSLContext) -> None:
    rule = COMMANDS[command_rule(block.page, command)]
    if rule.run is None:
        pytest.skip(rule.skip)
    rule.run(command, folder, client_context)


def test_every_declaration_matches_a_block() -> None:
    """The tables name real blocks and commands: an edited page cannot drop a check without a failure here."""
    for table in (SERVERS, CLIENTS, NOT_CODE, PYTHON_SKIPS, KNOWN_FAILING, AFTER):
        for page, needle in table:
            assert [block for block in BLOCKS[page] if needle in block.source], f"{page}: no block holds {needle!r}"
    for (page, _), server_needle in CLIENTS.items():
        find_block(page, server_needle)
    used = {command_rule(block.page, command) for block, _, command in COMMAND_CASES}
    assert not set(COMMANDS) - used, f"declared commands no page has: {set(COMMANDS) - used}"


def test_readme_python_passes_mypy_strict(tmp_path: Path) -> None:
    """README's example is typed as an application on smtpwire should be."""
    sources = [block.source for block in BLOCKS["README.md"] if block.language == "python"]
    assert sources
    for index, source in enumerate(sources):
        (tmp_path / f"readme_{index}.py").write_text(source)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_example_is_as_short_as_its_heading_says() -> None:
    readme = (ROOT / "README.md").read_text()
    (claimed,) = re.findall(r"^## A handler in (\d+) lines", readme, re.MULTILINE)
    block = find_block("README.md", "class Handler(smtpwire_anyio.AsyncHandler)")
    assert len([line for line in block.source.splitlines() if line.strip()]) <= int(claimed)


def test_memorybio_example_is_about_as_long_as_the_page_says() -> None:
    (claimed,) = re.findall(r"memorybio_asyncio\.py` \(about (\d+) lines\)", (ROOT / "docs/memorybio.md").read_text())
    lines = len((ROOT / "docs/examples/memorybio_asyncio.py").read_text().splitlines())
    assert abs(lines - int(claimed)) <= int(claimed) // 10, f"{lines} lines, the page says about {claimed}"


# -- the manual as a site -----------------------------------------------------------------------

MKDOCS_CONFIG = ROOT / "docs" / "mkdocs" / "mkdocs.yml"
API_PAGES = {
    "smtpwire": "api/smtpwire",
    "smtpwire_handler": "api/smtpwire_handler",
    "smtpwire_handler.kit": "api/smtpwire_handler",
    "smtpwire_asyncio": "api/adapters",
    "smtpwire_anyio": "api/adapters",
    "smtpwire_blocking": "api/adapters",
    "smtpwire_memorybio": "api/adapters",
    "smtpwire_testing": "api/smtpwire_testing",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The manual built by README's command, ``mkdocs build --strict``, into a temporary folder: any warning
    (a page not in the nav, a broken link or anchor, an API name mkdocstrings cannot find) fails the build."""
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    (build,) = [line for line in shell_commands(find_block("README.md", "mkdocs build")) if "mkdocs" in line]
    words = shlex.split(build)
    assert words[:3] == ["mkdocs", "build", "--strict"] and ROOT / words[-1] == MKDOCS_CONFIG
    result = subprocess.run(
        [sys.executable, "-m", *words, "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return site


def test_the_manual_builds_with_mkdocs_strict(site: Path) -> None:
    pages = {path.relative_to(ROOT / "docs").with_suffix("") for path in (ROOT / "docs").rglob("*.md")}
    for page in pages:
        built = site / ("" if page.name == "index" else page) / "index.html"
        assert built.is_file(), f"docs/{page}.md was not built"


def test_the_api_reference_shows_every_public_name(site: Path) -> None:
    """Each package's ``__all__``, rendered by mkdocstrings on its page (re-exports: on smtpwire_handler's)."""
    handler_page = (site / "api/smtpwire_handler/index.html").read_text()
    for package, page in API_PAGES.items():
        module = importlib.import_module(package)
        html = (site / page / "index.html").read_text()
        for name in module.__all__:
            if f'id="{package}.{name}"' in html:
                continue
            shared = importlib.import_module("smtpwire_handler")
            originals = [other for other in shared.__all__ if getattr(shared, other) is getattr(module, name)]
            assert any(re.search(rf'id="smtpwire_handler\.(\w+\.)?{other}"', handler_page) for other in originals), (
                f"{package}.{name} is not in the API reference"
            )
