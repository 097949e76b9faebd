"""The command line's own value types: listeners, networks, socket modes."""

from __future__ import annotations

import ipaddress
import re

import click

from smtpwire_handler.kit import HostPort

_HOST_PORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d+)")


#: A listener: (host, port), or the path of a Unix socket.
Listen = HostPort | str
#: The plain listener when no --listen is given (with or without --tls-listen).
DEFAULT_LISTEN: HostPort = ("127.0.0.1", 8025)
MAX_PORT = 65535


class PortOutOfRange(ValueError):
    """A HOST:PORT whose port no TCP socket can have: said as such, not as a malformed listener."""


def parse_host_port(value: str) -> HostPort:
    match = _HOST_PORT.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"expected HOST:PORT (IPv6 as [::1]:PORT), not {value!r}")
    port = int(match["port"])
    if port > MAX_PORT:
        raise PortOutOfRange(
            f"port {port} is out of range: a TCP port is 0 to {MAX_PORT} (0: any free one), in {value!r}"
        )
    return (match["v6"] or match["host"], port)


def no_port_option(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """The hidden ``--port``: newcomers from other servers type it; point them at ``--listen`` instead of --print."""
    if value is not None:
        shown = value if value.isdigit() else "PORT"
        raise click.UsageError(f"serve has no --port option: use --listen 127.0.0.1:{shown} (HOST:PORT)", ctx)


def parse_listen(value: str) -> Listen:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:PATH`` (a Unix socket; the path as given, relative or not)."""
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if not path or "\0" in path:
            raise ValueError(f"expected unix:PATH with a file path, not {value!r}")
        return path
    try:
        return parse_host_port(value)
    except PortOutOfRange:
        raise
    except ValueError as error:
        raise ValueError(f"{error} (or unix:PATH, a Unix socket)") from None


def networks(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """--trusted-proxy values, checked now: IP networks such as 10.0.0.0/8 (or single addresses)."""
    try:
        return tuple(str(ipaddress.ip_network(value)) for value in values)
    except ValueError as error:
        raise click.BadParameter(f"not an IP network such as 10.0.0.0/8: {error}", ctx, param) from None


class HostPortType(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    name = "HOST:PORT"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> Listen:
        if isinstance(value, tuple):  # a default, already converted
            return (str(value[0]), int(value[1]))
        try:
            return self.parse(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)

    def parse(self, text: str) -> Listen:
        return parse_host_port(text)


class ListenType(HostPortType):
    name = "HOST:PORT|unix:PATH"

    def parse(self, text: str) -> Listen:
        return parse_listen(text)


def octal_mode(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """--socket-mode, checked now: octal permission bits such as 0660."""
    try:
        mode = int(value, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise click.BadParameter(f"expected octal permission bits such as 0660, not {value!r}", ctx, param)
    return mode
