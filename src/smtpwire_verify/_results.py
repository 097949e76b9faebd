"""One method's verdict, in RFC 8601's terms."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One ``method=result`` of an Authentication-Results header field (RFC 8601 2.2).

    ``method`` is ``spf``, ``dkim``, ``dmarc`` or ``arc``; ``result`` its
    RFC 8601 keyword (``pass``, ``fail``, ``softfail``, ``neutral``,
    ``none``, ``temperror``, ``permerror``, ``policy``); ``reason`` the
    ``reason=`` text, if any; ``properties`` the ``ptype.property=value``
    pairs in the order they are written (``("smtp.mailfrom", "example.com")``,
    ``("header.d", "example.com")``).
    """

    method: str
    result: str
    reason: str | None = None
    properties: tuple[tuple[str, str], ...] = ()

    def property(self, name: str) -> str | None:
        """The value of ``name`` (``"header.d"``), or ``None``."""
        return next((value for key, value in self.properties if key == name), None)
