"""The adapter's loggers: one line per session event, and the optional wire transcript."""

from __future__ import annotations

import logging

#: Sessions opened and closed, handshakes that failed, refusals, hook and adapter errors.
log = logging.getLogger("smtpwire.blocking")

#: Every byte in and out at DEBUG (the first KiB of each read and write); shared by all adapters.
transcript = logging.getLogger("smtpwire.transcript")
