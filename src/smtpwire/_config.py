"""Per-server settings, given once and checked at construction."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._extensions import STANDARD_EXTENSIONS, Extension

_HOSTNAME = re.compile(r"[\x21-\x7e]{1,255}")
_POLICIES = ("reject", "accept")


@dataclass(frozen=True)
class ServerConfig:
    """Limits and policies of a server; every limit is bounded by default.

    ``require_auth`` answers MAIL with 530 5.7.0 until the client has
    authenticated (register the ``Auth`` extension too); after
    ``max_auth_failures`` failed AUTH attempts the session ends with 421.

    ``bare_line_endings``: ``"reject"`` (default) refuses a message that holds
    a CR or LF not part of CRLF, after its real end; ``"accept"`` passes such
    bytes through.  Either way only CRLF.CRLF ends a message.

    ``lmtp`` speaks LMTP (RFC 2033) instead: LHLO in place of HELO and EHLO,
    and at the end of a message one ``EndOfMessage`` per accepted recipient,
    each answered on its own.
    """

    hostname: str = "localhost"
    extensions: tuple[Extension, ...] = STANDARD_EXTENSIONS
    max_message_size: int = 32 * 1024 * 1024
    max_recipients: int = 100
    max_errors: int = 20
    max_command_line: int = 512
    require_tls: bool = False
    require_auth: bool = False
    max_auth_failures: int = 3
    bare_line_endings: str = "reject"
    lmtp: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.hostname, str) or not _HOSTNAME.fullmatch(self.hostname):
            raise ValueError(f"hostname must be 1-255 printable ASCII characters without spaces, not {self.hostname!r}")
        for name, minimum in (
            ("max_message_size", 1),
            ("max_recipients", 1),
            ("max_errors", 1),
            ("max_auth_failures", 1),
            ("max_command_line", 512),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an integer of at least {minimum}, not {value!r}")
        if not isinstance(self.lmtp, bool):
            raise ValueError(f"lmtp must be True or False, not {self.lmtp!r}")
        if self.bare_line_endings not in _POLICIES:
            raise ValueError(f"bare_line_endings must be one of {_POLICIES}, not {self.bare_line_endings!r}")
        if not all(isinstance(extension, Extension) for extension in self.extensions):
            raise ValueError("extensions must be Extension instances")
