"""A real MTA as the client: a throwaway Postfix relays into ``smtpwire serve``.

Postfix 3.x's SMTP server takes BDAT, but its SMTP client never sends it (the
``smtp`` program has no BDAT in it; it sends DATA whatever the server
offers), so this is the proof that a real MTA's DATA path, its pipelining
and its DSN relaying (RFC 3461 6.2: NOTIFY, ORCPT, RET and ENVID passed on)
work against serve while CHUNKING is offered.  BDAT from a real client
library is in test_chunking_adapters (Perl's Net::SMTP).

The instance has its own configuration, queue and data directories in a
temporary directory, listens on 127.0.0.1 only, and looks nothing up in the
DNS (the relay host is an address literal).  Starting Postfix needs root.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.test_cli import serve, split_trace, stored
from tests.test_interop import MESSAGE, TIMEOUT, need

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {home}/queue
data_directory = {home}/data
maillog_file = {home}/maillog
maillog_file_prefixes = {home}
myhostname = postfix.test
mydomain = test
mydestination =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay_port}
smtp_host_lookup = native
smtp_dns_support_level = disabled
"""

#: Only what relaying needs; nothing chrooted, nothing delivered locally.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def postfix(home: pathlib.Path, command: str) -> None:
    result = subprocess.run(
        [need("postfix"), "-c", str(home / "etc"), command], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, f"postfix {command}: {result.stdout}{result.stderr}{maillog(home)}"


def maillog(home: pathlib.Path) -> str:
    log = home / "maillog"
    return log.read_text(errors="replace") if log.exists() else ""


def stop_master(home: pathlib.Path) -> None:
    """``postfix stop`` signals the master; wait (bounded) for it to go, and kill it only if it stays."""
    with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
        postfix(home, "stop")
    pid_file = home / "queue" / "pid" / "master.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().strip())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def postfix_relay(relay_port: int) -> Iterator[tuple[int, pathlib.Path]]:
    """A Postfix instance relaying everything it accepts to 127.0.0.1:``relay_port``; yields its port and home."""
    if os.geteuid() != 0:
        pytest.skip("starting a Postfix instance needs root")
    home = pathlib.Path(tempfile.mkdtemp(prefix="smtpwire-postfix-"))
    home.chmod(0o755)  # its daemons run as the postfix user
    port = free_port()
    for folder in ("etc", "queue", "data"):
        (home / folder).mkdir(mode=0o755)
    shutil.chown(home / "data", pwd.getpwnam("postfix").pw_uid)
    (home / "etc" / "main.cf").write_text(MAIN_CF.format(home=home, relay_port=relay_port))
    (home / "etc" / "master.cf").write_text(MASTER_CF.format(port=port))
    try:
        postfix(home, "start")
        yield port, home
    finally:
        stop_master(home)
        shutil.rmtree(home, ignore_errors=True)


def test_postfix_relays_into_serve_with_its_dsn_requests(tmp_path: pathlib.Path) -> None:
    maildir = tmp_path / "maildir"
    with serve("-v", "--maildir", str(maildir)) as server, postfix_relay(server.address[1]) as (port, home):
        with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
            client.ehlo("client.example")
            assert client.has_extn("chunking") and client.has_extn("dsn")  # Postfix's own server
            refused = client.sendmail(
                "alice@example.org",
                ["bob@example.net"],
                MESSAGE,
                mail_options=["RET=HDRS", "ENVID=QQ+2B314159"],
                rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@example.net"],
            )
            assert refused == {}
        try:
            server.wait_for(r"accepted id=\w+ from=<alice@example.org> to=<bob@example.net> ")
        except AssertionError as error:
            raise AssertionError(f"{error}\nPostfix's log:\n{maillog(home)}") from None
        assert server.stop() == 0
    transcript = server.output()
    assert re.search(r">>> b'250-mx\.test\\r\\n.*250-CHUNKING\\r\\n", transcript)  # offered to Postfix,
    assert re.search(r"<<< b'.*RCPT TO:<bob@example\.net>[^']*\\r\\nDATA\\r\\n'", transcript)  # which sent DATA
    (message,) = stored(maildir)
    trace, rest = split_trace(message)
    assert "Received: from postfix.test ([127.0.0.1])" in trace
    requests, relayed = rest.split(b"Received: from client.example", 1)
    assert requests.decode() == (
        "X-Smtpwire-DSN: RET=HDRS ENVID=QQ+2B314159\r\n"
        "X-Smtpwire-DSN-Recipient: <bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net\r\n"
    )
    headers, body = relayed.split(b"\r\n\r\n", 1)
    assert body == MESSAGE.split(b"\r\n\r\n", 1)[1]  # dot-stuffed by Postfix, unstuffed by serve: as sent
    assert b"\r\nSubject: interop\r\n" in headers and b"\r\nMessage-Id: <" in headers
