"""Coverage-guided fuzz target for the MTA side of the milter protocol: a filter's replies at every stage.

Fuzz (new inputs go to the first directory, ``fuzz/corpus-milter`` is only read)::

    python fuzz/fuzz_milter.py -atheris_runs=20000 -max_len=4096 "$(mktemp -d)" fuzz/corpus-milter

Rewrite the named seeds after changing the input format::

    python fuzz/fuzz_milter.py --write-seeds fuzz/corpus-milter

Input format: one octet choosing the stage (its value modulo the number of
stages: the negotiation, connect, HELO, MAIL, RCPT, DATA, the message), then
the bytes the filter sends, fed in two pieces (cut where the second octet of
the input says) so a reply split across reads is exercised.  Past the
negotiation, the filter is taken to have negotiated every action and no
protocol flag.  ``tests/test_milter.py`` replays the corpus without atheris.

Invariants: ``receive`` never raises and returns a ``Step``; a stage ends
with an ``Outcome`` whose final word is one of the final replies or a
``MilterError``; an error leaves the session broken (later stages end at
once with it, sending nothing); the modifications of the message stage
apply to a message without raising, and the result keeps the trace field on
top and a header whose every line is a field or continues one.
"""

from __future__ import annotations

try:
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]
except ImportError:  # replaying the corpus needs no atheris
    atheris = None

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["smtpwire_filters"]):
        import smtpwire_filters._milter as milter
        import smtpwire_filters._milter_codec as codec
else:
    import smtpwire_filters._milter as milter
    import smtpwire_filters._milter_codec as codec

import struct

TRACE = b"Received: from client.example ([192.0.2.1])\r\n\tby mx.example (smtpwire) with ESMTP id fuzz\r\n"
MESSAGE = b"From: a@example.org\r\nSubject: fuzz\r\n folded\r\n\r\nbody line\r\n.dot\r\n"
FINALS = (codec.Continue, codec.Accept, codec.Reject, codec.Tempfail, codec.Discard, codec.ReplyCode, codec.MilterError)


def negotiated() -> milter.MilterSession:
    session = milter.MilterSession(max_changes=50, max_octets=4096, max_progress=5)
    session.negotiate()
    step = session.receive(codec.packet(codec.OPTNEG, struct.pack("!III", 6, codec.ALL_ACTIONS, 0)))
    assert step.outcome == milter.CONTINUE
    return session


def start(session: milter.MilterSession, stage: int) -> milter.Step:
    macros = {"j": "mx.example", "{client_addr}": "192.0.2.1"}
    starts = (
        lambda: session.connect(macros, "client.example", "4", 25, "192.0.2.1"),
        lambda: session.helo(macros, "client.example"),
        lambda: session.mail(macros, "a@example.org", ["SIZE=10"]),
        lambda: session.rcpt(macros, "b@example.net"),
        lambda: session.data(macros),
        lambda: session.message(macros, milter.MilterMessage.parse(TRACE, MESSAGE).headers(), b"body\r\n" * 3),
    )
    return starts[stage - 1]()


def feed(session: milter.MilterSession, step: milter.Step, replies: bytes, cut: int) -> milter.Step:
    for piece in (replies[:cut], replies[cut:]):
        if step.outcome is not None:
            break
        if piece:
            step = session.receive(piece)
            assert isinstance(step, milter.Step)
    return step


def check_message(outcome: milter.Outcome) -> None:
    message = milter.MilterMessage.parse(TRACE, MESSAGE)
    message.apply(outcome.modifications)
    stored = message.stored()
    assert message.fields[0].fixed and message.fields[0].raw == TRACE
    header = stored.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in stored else b""
    for line in header.split(b"\r\n") if header else ():
        assert line[:1] in (b" ", b"\t") or b":" in line, line


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    stage, cut, replies = data[0] % 7, data[1] % (len(data) - 1), data[2:]
    session = milter.MilterSession(max_changes=50, max_octets=4096, max_progress=5) if stage == 0 else negotiated()
    step = session.negotiate() if stage == 0 else start(session, stage)
    step = feed(session, step, replies, cut)
    if step.outcome is None:
        return
    assert isinstance(step.outcome.final, FINALS), step.outcome
    if isinstance(step.outcome.final, codec.MilterError):
        later = session.mail({}, "x@example.org")
        assert later.data == b"" and isinstance(later.outcome and later.outcome.final, codec.MilterError)
    elif stage == 6:
        check_message(step.outcome)


def _reply(command: bytes, payload: bytes = b"") -> bytes:
    return codec.packet(command, payload)


def _seed(stage: int, *replies: bytes) -> bytes:
    return bytes([stage, 0]) + b"".join(replies)


#: Named seeds: each stage's usual replies, every modification, and the malformed ones.
SEEDS: dict[str, bytes] = {
    "negotiate": _seed(0, _reply(b"O", struct.pack("!III", 6, 0x1FF, 0x1FF) + b"\0\0\0\x02{mail_addr} i\0")),
    "negotiate-old-version": _seed(0, _reply(b"O", struct.pack("!III", 7, 0, 0))),
    "connect-continue": _seed(1, _reply(b"c")),
    "helo-progress-reject": _seed(2, _reply(b"p"), _reply(b"r")),
    "mail-replycode": _seed(3, _reply(b"y", b"451 4.7.1 Greylisted\0")),
    "rcpt-multiline-code": _seed(4, _reply(b"y", b"550-5.1.1 No\r\n550 5.1.1 Such user\0")),
    "data-discard": _seed(5, _reply(b"d")),
    "message-modifications": _seed(
        6,
        _reply(b"c") * 5,
        _reply(b"h", b"X-Spam\0yes\0"),
        _reply(b"i", b"\0\0\0\0X-Top\0first\0"),
        _reply(b"m", b"\0\0\0\x01Subject\0\0"),
        _reply(b"+", b"<c@example.net>\0"),
        _reply(b"2", b"<d@example.net>\0NOTIFY=NEVER\0"),
        _reply(b"-", b"<b@example.net>\0"),
        _reply(b"e", b"<new@example.org>\0\0"),
        _reply(b"b", b"new body\r\n"),
        _reply(b"q", b"suspicious\0"),
        _reply(b"a"),
    ),
    "message-skip-body": _seed(6, _reply(b"c") * 4, _reply(b"s"), _reply(b"c")),
    "oversized-packet": _seed(3, b"\x7f\xff\xff\xffc"),
    "unknown-reply": _seed(4, _reply(b"Z", b"??")),
    "header-injection": _seed(6, _reply(b"c") * 5, _reply(b"h", b"X-Bad\0a\r\nTo: evil\0")),
}


if __name__ == "__main__":
    from _cli import main

    main(TestOneInput, SEEDS, atheris)
