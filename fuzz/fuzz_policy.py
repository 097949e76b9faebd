"""Coverage-guided fuzz target for the policy delegation codec (atheris / libFuzzer).

Fuzz (new inputs go to the first directory, ``fuzz/corpus-policy`` is only read)::

    python fuzz/fuzz_policy.py -atheris_runs=20000 -max_len=4096 "$(mktemp -d)" fuzz/corpus-policy

Rewrite the named seeds after changing the input format::

    python fuzz/fuzz_policy.py --write-seeds fuzz/corpus-policy

Input format: one octet, the size of the pieces the rest is fed in (0 is
the whole at once), then what a policy server sends.
``tests/test_policy.py`` replays the corpus through ``TestOneInput`` without atheris.

Invariants: ``PolicyReplyReader.receive`` returns ``None`` or a
``PolicyAction``, or raises ``PolicyReplyError``, nothing else; fed in
pieces it comes to what it comes to fed whole; it keeps at most a reply
line and what follows the reply is bounded; an action's text has no line
break and a PREPENDed header is one line with a name and a colon.  The
same input, read as attributes, makes a request of exactly one line each
and the empty line.
"""

from __future__ import annotations

try:
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]
except ImportError:  # replaying the corpus needs no atheris
    atheris = None

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["smtpwire_filters"]):
        import smtpwire_filters._policy as policy
else:
    import smtpwire_filters._policy as policy


def read(data: bytes, piece: int) -> policy.PolicyAction | str | None:
    """What the reader makes of ``data`` fed ``piece`` octets at a time (whole if 0): an action, an error, or None."""
    reader = policy.PolicyReplyReader()
    step = piece or max(len(data), 1)
    result: policy.PolicyAction | None = None
    try:
        for start in range(0, len(data), step):
            result = reader.receive(data[start : start + step])
            assert len(reader._buffer) < policy.MAX_REPLY_LINE + step
        if result is None:
            result = reader.receive(b"")  # the server closes: an error unless the reply was whole
    except policy.PolicyReplyError:
        return "error"
    assert len(reader.trailing) <= policy.MAX_REPLY_LINE
    return result


def check_action(action: policy.PolicyAction) -> None:
    assert isinstance(action, policy.PolicyAction) and isinstance(action.kind, policy.PolicyKind)
    assert "\n" not in action.text and "\r" not in action.text, action
    assert (action.code is not None) == (action.kind is policy.PolicyKind.REPLY), action
    if action.code is not None:
        assert 400 <= action.code <= 599, action
    if action.enhanced is not None:
        assert action.enhanced[0] in (4, 5) and all(0 <= n <= 999 for n in action.enhanced), action
    if action.kind is policy.PolicyKind.PREPEND:
        name, colon, _ = action.text.partition(":")
        assert colon and name and " " not in name, action
        assert len(action.text.encode()) <= policy.MAX_HEADER, action


def check_request(text: str) -> None:
    attributes = {f"a{i}": value for i, value in enumerate(text.split("=")[: policy.MAX_ATTRIBUTES])}
    request = policy.policy_request(attributes)
    assert request.endswith(b"\n\n") and request.count(b"\n") == len(attributes) + 1, request


def TestOneInput(data: bytes) -> None:
    piece, reply = (data[0], data[1:]) if data else (0, b"")
    whole = read(reply, 0)
    assert read(reply, piece) == whole, (piece, whole)
    if isinstance(whole, policy.PolicyAction):
        check_action(whole)
    check_request(reply.decode("utf-8", "replace"))


def seed(piece: int, reply: bytes) -> bytes:
    return bytes([piece]) + reply


#: Named seeds: what postgrey, policyd-spf and Postfix's own examples send, and what they must not.
SEEDS: dict[str, bytes] = {
    "postgrey-greylist": seed(0, b"action=DEFER_IF_PERMIT Greylisted, see http://postgrey.example/help/x.html\n\n"),
    "postgrey-prepend": seed(
        7, b"action=PREPEND X-Greylist: delayed 2 seconds by postgrey-1.37 at mx; Sun, 06 Dec 2026 18:00:00 UTC\n\n"
    ),
    "dunno-dripped": seed(1, b"action=dunno\n\n"),
    "numeric-enhanced-class": seed(3, b"action=550 2.1.1 <bob@example.org>: no such user\n\n"),
    "reject-defer-text": seed(0, b"action=REJECT 5.7.0 go away\n\naction=DEFER later\n\n"),
    "spf-prepend-and-extra": seed(
        5, b"foo=bar\r\naction=PREPEND Received-SPF: Pass (mailfrom) identity=mailfrom\r\nbaz=\r\n\r\n"
    ),
    "unapplied-filter": seed(0, b"action=FILTER smtp:[127.0.0.1]:10025\n\n"),
    "hold-discard-warn": seed(2, b"action=HOLD quarantined\n\naction=DISCARD\n\naction=WARN hmm\n\n"),
    "bad-prepend": seed(0, b"action=PREPEND no colon here\n\n"),
    "garbage": seed(4, b"\x00\xff\xfegarbage without equals\n\n"),
    "two-actions": seed(0, b"action=OK\naction=REJECT\n\n"),
    "no-action": seed(0, b"x=y\n\n"),
    "unknown-action": seed(0, b"action=permit_mynetworks\n\n"),
    "long-line": seed(64, b"action=REJECT " + b"x" * 5000 + b"\n\n"),
    "many-lines": seed(0, b"a=b\n" * 40 + b"action=OK\n\n"),
    "cut-short": seed(0, b"action=OK\n"),
}


if __name__ == "__main__":
    from _cli import main

    main(TestOneInput, SEEDS, atheris)
