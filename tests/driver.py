"""A tiny synchronous driver around ServerConnection for tests."""

from __future__ import annotations

from collections.abc import Callable

import smtpwire

Answer = Callable[[smtpwire.Decision], "smtpwire.Reply | None"]
Lookup = Callable[[smtpwire.CredentialsLookup], "smtpwire.ScramCredentials | str | None"]

STARTTLS_CONFIG = smtpwire.ServerConfig(
    hostname="mx.test", extensions=(*smtpwire.STANDARD_EXTENSIONS, smtpwire.StartTLS())
)


class Driver:
    """Feeds bytes, answers decisions (accepting unless ``answer`` says otherwise), collects events."""

    def __init__(
        self,
        config: smtpwire.ServerConfig | None = None,
        *,
        answer: Answer | None = None,
        lookup: Lookup | None = None,
        tls_active: bool = False,
        greet: bool = True,
    ) -> None:
        self.conn = smtpwire.ServerConnection(
            config or smtpwire.ServerConfig(hostname="mx.test"), tls_active=tls_active
        )
        self.answer = answer or (lambda event: None)
        self.lookup = lookup or (lambda event: None)
        self.events: list[smtpwire.Event] = []
        if greet:
            self.pump()
            self.conn.data_to_send()
            self.events.clear()

    def pump(self) -> list[smtpwire.Event]:
        """Drain events until NEED_DATA/PAUSED/closed; returns the new ones."""
        new: list[smtpwire.Event] = []
        for _ in range(100_000):
            event = self.conn.next_event()
            if event is smtpwire.NEED_DATA or event is smtpwire.PAUSED:
                break
            assert isinstance(event, smtpwire.Event)
            new.append(event)
            if isinstance(event, smtpwire.CredentialsLookup):
                self.conn.supply(self.lookup(event))
            elif isinstance(event, smtpwire.Decision):
                reply = self.answer(event)
                if reply is None:
                    self.conn.accept()
                else:
                    self.conn.send(reply)
            if isinstance(event, smtpwire.ConnectionClosed):
                break
        else:  # pragma: no cover - a loop guard
            raise AssertionError("next_event() never asked for data")
        self.events.extend(new)
        return new

    def feed(self, data: bytes) -> bytes:
        self.conn.receive_data(data)
        self.pump()
        return self.conn.data_to_send()

    def say(self, *lines: str) -> str:
        """Send command lines (CRLF added) and return the reply text."""
        return self.feed("".join(line + "\r\n" for line in lines).encode()).decode()

    def codes(self, *lines: str) -> list[int]:
        """Reply codes of the final line of each reply to these commands."""
        return [int(line[:3]) for line in self.say(*lines).splitlines() if line[3:4] == " "]

    def send_message(self, body: bytes, mail: str = "MAIL FROM:<a@example.org>") -> str:
        """Send a whole transaction; ``body`` must end with CRLF (the end marker is added)."""
        self.say("EHLO client.test", mail, "RCPT TO:<b@example.net>", "DATA")
        return self.feed(body + b".\r\n").decode()

    def message_bytes(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, smtpwire.MessageData))
