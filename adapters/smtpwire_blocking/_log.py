"""The adapter's logger: sessions opened and closed, failed handshakes, refusals, errors."""

from __future__ import annotations

import logging

#: Sessions opened and closed, handshakes that failed, refusals, hook and adapter errors.
log = logging.getLogger("smtpwire.blocking")
