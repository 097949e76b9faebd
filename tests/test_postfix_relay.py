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
import pathlib
import re
import smtplib
import socket
from collections.abc import Iterator

from tests.postfix import maillog, throwaway_postfix
from tests.test_cli import serve, split_trace, stored
from tests.test_interop import MESSAGE, TIMEOUT


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def postfix_relay(relay_port: int) -> Iterator[tuple[int, pathlib.Path]]:
    """A Postfix instance relaying everything it accepts to 127.0.0.1:``relay_port``; yields its port and home."""
    port = free_port()
    main_cf = (
        "myhostname = postfix.test\nmydomain = test\ninet_interfaces = 127.0.0.1\nmynetworks = 127.0.0.0/8\n"
        f"relayhost = [127.0.0.1]:{relay_port}\nsmtp_host_lookup = native\n"
    )
    services = f"127.0.0.1:{port} inet n - n - - smtpd\nsmtp unix - - n - - smtp\nrelay unix - - n - - smtp\n"
    with throwaway_postfix(main_cf, services) as home:
        yield port, home


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
    assert re.search(r" S: 250 mx\.test \|.* \| CHUNKING( \||$)", transcript, re.MULTILINE)  # offered to Postfix,
    assert re.search(r" C: RCPT TO:<bob@example\.net>[^\n]*\n[^\n]* C: DATA\n", transcript)  # which sent DATA
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
