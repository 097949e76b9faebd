"""SASL mechanisms for SMTP AUTH: RFC examples, every failure path, order errors, properties."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from smtpwire import LocalProtocolError
from smtpwire._sasl import (
    MAX_CLIENT_NONCE,
    MAX_ITERATIONS,
    MAX_MESSAGE,
    MAX_SALT,
    MAX_SERVER_NONCE,
    MECHANISMS,
    Challenge,
    CheckPassword,
    CramMd5,
    Failure,
    LookupPassword,
    LookupScram,
    Mechanism,
    ScramCredentials,
    ScramSha256,
    Step,
    Success,
    sasl_mechanism,
    saslprep,
    scram_credentials,
)

# RFC 7677 section 3.
RFC7677_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC7677_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC7677_SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC7677_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC7677_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
PENCIL = scram_credentials("pencil", salt=RFC7677_SALT)


def mechanism(name: str) -> Mechanism:
    created = sasl_mechanism(name, nonce="SERVERNONCE", allow_cram_md5=True)
    assert created is not None
    return created


def scram_client_final(client_first: bytes, server_first: bytes, password: str, extra: str = "") -> bytes:
    """An independent SCRAM-SHA-256 client (RFC 5802 3) computing client-final."""
    flag, _, rest = client_first.decode().partition(",")
    authz, _, bare = rest.partition(",")
    attrs = dict(item.split("=", 1) for item in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    binding = base64.b64encode(f"{flag},{authz},".encode()).decode()
    without_proof = f"c={binding},r={attrs['r']}{extra}"
    auth_message = f"{bare},{server_first.decode()},{without_proof}".encode()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def scram_server_final(server_first: bytes, client_final: bytes, password: str, client_first: bytes) -> bytes:
    attrs = dict(item.split("=", 1) for item in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    bare = client_first.split(b",", 2)[2]
    without_proof = client_final.rpartition(b",")[0]
    auth_message = bare + b"," + server_first + b"," + without_proof
    return b"v=" + base64.b64encode(hmac.new(server_key, auth_message, "sha256").digest())


# --- the factory -----------------------------------------------------------


def test_default_mechanisms_in_advertising_order() -> None:
    assert MECHANISMS == ("SCRAM-SHA-256", "PLAIN", "LOGIN")
    for name in MECHANISMS:
        created = sasl_mechanism(name)
        assert created is not None and created.name == name


def test_names_are_case_insensitive() -> None:
    assert isinstance(sasl_mechanism("plain"), Mechanism)
    assert isinstance(sasl_mechanism("Scram-Sha-256"), ScramSha256)
    assert isinstance(sasl_mechanism("login"), Mechanism)


@pytest.mark.parametrize("name", ["GSSAPI", "", "XOAUTH2", "CRAM-MD5", "cram-md5", "log\u0131n", "SCRAM-SHA-1"])
def test_unknown_or_disabled_names(name: str) -> None:
    assert sasl_mechanism(name) is None


def test_cram_md5_only_when_allowed() -> None:
    created = sasl_mechanism("cram-md5", nonce="1896.697170952", allow_cram_md5=True)
    assert isinstance(created, CramMd5)
    assert created.start(None) == Challenge(b"<1896.697170952@smtpwire>")


def test_default_nonce_is_random() -> None:
    server_firsts = []
    for _ in range(2):
        scram = sasl_mechanism("SCRAM-SHA-256")
        assert scram is not None
        scram.start(RFC7677_CLIENT_FIRST)
        step = scram.found(PENCIL)
        assert isinstance(step, Challenge)
        server_firsts.append(step.data.split(b",")[0])
    assert server_firsts[0] != server_firsts[1]
    assert all(first.startswith(b"r=rOprNGfwEbeRWgbNEkqO") and len(first) == 2 + 20 + 24 for first in server_firsts)


def test_default_cram_md5_challenge_is_random() -> None:
    one, two = (sasl_mechanism("CRAM-MD5", allow_cram_md5=True) for _ in range(2))
    assert one is not None and two is not None
    first, second = one.start(None), two.start(None)
    assert isinstance(first, Challenge) and first != second
    assert first.data.startswith(b"<") and first.data.endswith(b"@smtpwire>")


@pytest.mark.parametrize("nonce", ["", "a,b", "a b", "caf\u00e9", "tab\t"])
def test_bad_nonce_is_the_callers_mistake(nonce: str) -> None:
    with pytest.raises(ValueError, match="nonce"):
        sasl_mechanism("PLAIN", nonce=nonce)


def test_failure_kind_is_checked() -> None:
    assert Failure("cancelled").kind == "cancelled"
    with pytest.raises(LocalProtocolError):
        Failure("nope")  # type: ignore[arg-type]


# --- PLAIN (RFC 4616) ------------------------------------------------------


def test_plain_rfc4616_example_without_authzid() -> None:
    plain = mechanism("PLAIN")
    step = plain.start(b"\0tim\0tanstaaftanstaaf")
    assert step == CheckPassword("", "tim", "tanstaaftanstaaf")
    assert plain.verified(True) == Success("", "tim")


def test_plain_rfc4616_example_with_authzid() -> None:
    plain = mechanism("PLAIN")
    assert plain.start(b"Ursel\0Kurt\0xipj3plmq") == CheckPassword("Ursel", "Kurt", "xipj3plmq")
    assert plain.verified(False) == Failure("credentials")


def test_plain_without_initial_response_sends_empty_challenge() -> None:
    plain = mechanism("PLAIN")
    assert plain.start(None) == Challenge(b"")
    assert plain.respond("\0j\u00fcrgen\0p\u00e4ss".encode()) == CheckPassword("", "j\u00fcrgen", "p\u00e4ss")
    assert plain.verified(True) == Success("", "j\u00fcrgen")


def test_plain_fields_of_255_octets_are_fine() -> None:
    field = b"x" * 255
    assert mechanism("PLAIN").start(field + b"\0" + field + b"\0" + field) == CheckPassword(*[field.decode()] * 3)


@pytest.mark.parametrize(
    "message",
    [
        b"",  # RFC 4954 "=": an empty response
        b"tim",
        b"\0tim",
        b"\0tim\0pw\0",
        b"a\0b\0c\0d",
        b"\0\0password",  # empty authcid
        b"\0tim\0",  # empty passwd
        b"\xff\0tim\0pw",
        b"\0t\xc3\0pw",
        b"\0tim\0\xe2\x82",
        b"\0" + b"u" * 256 + b"\0pw",
        b"\0tim\0" + b"p" * 256,
        b"a" * 256 + b"\0tim\0pw",
    ],
)
def test_plain_malformed(message: bytes) -> None:
    assert mechanism("PLAIN").start(message) == Failure("malformed")
    plain = mechanism("PLAIN")
    plain.start(None)
    assert plain.respond(message) == Failure("malformed")


def test_messages_are_bounded() -> None:
    huge = b"\0tim\0" + b"p" * MAX_MESSAGE
    assert mechanism("PLAIN").start(huge) == Failure("malformed")
    plain = mechanism("PLAIN")
    plain.start(None)
    assert plain.respond(huge) == Failure("malformed")
    scram = mechanism("SCRAM-SHA-256")
    assert scram.start(RFC7677_CLIENT_FIRST + b",x=" + b"y" * MAX_MESSAGE) == Failure("malformed")


# --- LOGIN -----------------------------------------------------------------


def test_login_asks_for_username_then_password() -> None:
    login = mechanism("LOGIN")
    assert login.start(None) == Challenge(b"Username:")
    assert login.respond(b"tim") == Challenge(b"Password:")
    assert login.respond(b"tanstaaftanstaaf") == CheckPassword("", "tim", "tanstaaftanstaaf")
    assert login.verified(True) == Success("", "tim")


def test_login_initial_response_is_the_username() -> None:
    login = mechanism("LOGIN")
    assert login.start(b"tim") == Challenge(b"Password:")
    assert login.respond(b"wrong") == CheckPassword("", "tim", "wrong")
    assert login.verified(False) == Failure("credentials")


@pytest.mark.parametrize("bad", [b"", b"t\0m", b"\xff", b"u" * 256])
def test_login_malformed_username(bad: bytes) -> None:
    assert mechanism("LOGIN").start(bad) == Failure("malformed")
    login = mechanism("LOGIN")
    login.start(None)
    assert login.respond(bad) == Failure("malformed")


@pytest.mark.parametrize("bad", [b"", b"p\0w", b"\xc3", b"p" * 256])
def test_login_malformed_password(bad: bytes) -> None:
    login = mechanism("LOGIN")
    login.start(b"tim")
    assert login.respond(bad) == Failure("malformed")


# --- calls in the wrong order ------------------------------------------------


@pytest.mark.parametrize("name", ["PLAIN", "LOGIN", "SCRAM-SHA-256", "CRAM-MD5"])
def test_nothing_before_start(name: str) -> None:
    for call in (
        lambda m: m.respond(b""),
        lambda m: m.verified(True),
        lambda m: m.found(PENCIL),
        lambda m: m.found("pw"),
    ):
        with pytest.raises(LocalProtocolError, match=r"out of order; expected start"):
            call(mechanism(name))


@pytest.mark.parametrize("verdict", ["no such user", 1, None])
def test_verified_takes_only_a_bool(verdict: object) -> None:
    plain = mechanism("PLAIN")
    plain.start(b"\0tim\0pw")
    with pytest.raises(LocalProtocolError, match="bool"):
        plain.verified(verdict)  # type: ignore[arg-type]
    assert plain.verified(False) == Failure("credentials")


def test_start_only_once() -> None:
    plain = mechanism("PLAIN")
    plain.start(None)
    with pytest.raises(LocalProtocolError, match=r"PLAIN: start\(\) called out of order; expected respond"):
        plain.start(None)


def test_respond_while_a_check_is_pending() -> None:
    plain = mechanism("PLAIN")
    plain.start(b"\0tim\0secret-password")
    with pytest.raises(LocalProtocolError) as info:
        plain.respond(b"x")
    assert "secret-password" not in str(info.value)
    with pytest.raises(LocalProtocolError):
        plain.found(None)
    assert plain.verified(True) == Success("", "tim")


@pytest.mark.parametrize("ok", [True, False])
@pytest.mark.parametrize("call", ["start", "respond", "verified", "found"])
def test_nothing_after_the_end(ok: bool, call: str) -> None:
    plain = mechanism("PLAIN")
    plain.start(b"\0tim\0pw")
    plain.verified(ok)
    arguments = {"start": None, "respond": b"", "verified": True, "found": None}
    with pytest.raises(LocalProtocolError, match="the attempt is over"):
        getattr(plain, call)(arguments[call])


def test_nothing_after_a_failure() -> None:
    login = mechanism("LOGIN")
    assert login.start(b"") == Failure("malformed")
    with pytest.raises(LocalProtocolError, match="the attempt is over"):
        login.respond(b"tim")


def test_scram_order() -> None:
    scram = mechanism("SCRAM-SHA-256")
    scram.start(None)
    with pytest.raises(LocalProtocolError):
        scram.found(PENCIL)
    scram.respond(RFC7677_CLIENT_FIRST)
    for call in (lambda: scram.respond(b""), lambda: scram.verified(True)):
        with pytest.raises(LocalProtocolError, match="expected found"):
            call()
    with pytest.raises(LocalProtocolError, match="takes ScramCredentials"):
        scram.found("pencil")
    scram.found(PENCIL)
    with pytest.raises(LocalProtocolError, match="expected respond"):
        scram.found(PENCIL)
    assert scram.respond(RFC7677_CLIENT_FINAL) == Failure("malformed")  # made for another server nonce
    with pytest.raises(LocalProtocolError):
        scram.found(PENCIL)


def test_scram_order_around_the_second_lookup() -> None:
    scram = ScramSha256(RFC7677_SERVER_NONCE)
    scram.start(RFC7677_CLIENT_FIRST)
    scram.found(PENCIL)
    assert scram.respond(RFC7677_CLIENT_FINAL) == LookupScram("", "user")
    with pytest.raises(LocalProtocolError, match="expected found"):
        scram.respond(b"")
    with pytest.raises(LocalProtocolError, match="takes ScramCredentials"):
        scram.found("pencil")
    assert scram.found(PENCIL) == Challenge(RFC7677_SERVER_FINAL)
    with pytest.raises(LocalProtocolError, match="expected respond"):
        scram.found(PENCIL)


def test_cram_md5_order() -> None:
    cram = mechanism("CRAM-MD5")
    cram.start(None)
    with pytest.raises(LocalProtocolError):
        cram.found("pw")
    cram.respond(b"tim " + b"0" * 32)
    with pytest.raises(LocalProtocolError, match="expected found"):
        cram.respond(b"x")
    with pytest.raises(LocalProtocolError, match="takes the password"):
        cram.found(PENCIL)
    cram.found(None)
    with pytest.raises(LocalProtocolError):
        cram.found("pw")


# --- SCRAM-SHA-256 (RFC 5802, RFC 7677) --------------------------------------


def test_scram_rfc7677_example() -> None:
    scram = ScramSha256(RFC7677_SERVER_NONCE)
    assert scram.start(RFC7677_CLIENT_FIRST) == LookupScram("", "user")
    assert scram.found(PENCIL) == Challenge(RFC7677_SERVER_FIRST)
    assert scram.respond(RFC7677_CLIENT_FINAL) == LookupScram("", "user")  # the proof is right: may they?
    assert scram.found(PENCIL) == Challenge(RFC7677_SERVER_FINAL)
    assert scram.respond(b"") == Success("", "user")


def test_scram_rfc7677_example_through_the_factory_without_initial_response() -> None:
    scram = sasl_mechanism("scram-sha-256", nonce=RFC7677_SERVER_NONCE)
    assert scram is not None
    assert scram.start(None) == Challenge(b"")
    assert scram.respond(RFC7677_CLIENT_FIRST) == LookupScram("", "user")
    assert scram.found(PENCIL) == Challenge(RFC7677_SERVER_FIRST)
    assert scram_client_final(RFC7677_CLIENT_FIRST, RFC7677_SERVER_FIRST, "pencil") == RFC7677_CLIENT_FINAL
    assert scram.respond(RFC7677_CLIENT_FINAL) == LookupScram("", "user")
    assert scram.found(PENCIL) == Challenge(RFC7677_SERVER_FINAL)
    assert scram.respond(b"") == Success("", "user")


@pytest.mark.parametrize("ack", [b"x", b"v=6rriTRBi23WpRR", b"\xff"])
def test_scram_client_must_answer_server_final_with_empty_line(ack: bytes) -> None:
    scram = ScramSha256(RFC7677_SERVER_NONCE)
    scram.start(RFC7677_CLIENT_FIRST)
    scram.found(PENCIL)
    scram.respond(RFC7677_CLIENT_FINAL)
    scram.found(PENCIL)
    assert scram.respond(ack) == Failure("malformed")


def run_scram(
    client_first: bytes,
    password: str,
    stored: ScramCredentials | None,
    extra: str = "",
    *,
    authorized: bool = True,
    scram: Mechanism | None = None,
) -> list[Step]:
    """The whole exchange; the application finds ``stored``, then says ``authorized`` once the proof is right."""
    scram = scram or mechanism("SCRAM-SHA-256")
    steps = [scram.start(client_first)]
    steps.append(scram.found(stored))
    server_first = steps[-1]
    assert isinstance(server_first, Challenge)
    final = scram_client_final(client_first, server_first.data, password, extra)
    steps.append(scram.respond(final))
    if isinstance(steps[-1], LookupScram):
        steps.append(scram.found(stored if authorized else None))
    if isinstance(steps[-1], Challenge):
        assert steps[-1].data == scram_server_final(server_first.data, final, password, client_first)
        steps.append(scram.respond(b""))
    return steps


def test_scram_with_authzid_flag_y_escapes_and_extensions() -> None:
    client_first = b"y,a=admin=2Cops=3D1,n=us=3Der=2Cx,r=abc,x=extension"
    stored = scram_credentials("p\u00e4ss", iterations=5000)
    steps = run_scram(client_first, "p\u00e4ss", stored, extra=",z=ext")
    assert steps[0] == LookupScram("", "us=er,x")  # the salt never depends on the authzid
    assert isinstance(steps[1], Challenge) and steps[1].data.endswith(b",i=5000")
    assert steps[2] == LookupScram("admin,ops=1", "us=er,x")  # asked once the proof is right
    assert steps[-1] == Success("admin,ops=1", "us=er,x")


def test_scram_username_goes_through_saslprep() -> None:
    assert mechanism("SCRAM-SHA-256").start("n,,n=I\u00adX,r=abc".encode()) == LookupScram("", "IX")
    assert mechanism("SCRAM-SHA-256").start("n,,n=\u2168\u00a0x,r=abc".encode()) == LookupScram("", "IX x")


def test_scram_wrong_password() -> None:
    steps = run_scram(b"n,,n=user,r=abc", "pencil!", PENCIL)
    assert steps[-1] == Failure("credentials") and len(steps) == 3  # no second lookup for a wrong proof


def who_may_act_as(authzid: str, username: str) -> ScramCredentials | None:
    """An application's lookup: the user's keys, or None when they may not act as the authzid."""
    return STORED.get(username) if authzid in ("", username) else None


@pytest.mark.parametrize("username", ["user", "nobody"])
def test_scram_salt_does_not_depend_on_the_authzid(username: str) -> None:
    """Issue 11 (2): a refused authzid gave a real user a decoy salt, so two sessions told real users apart."""
    challenges = []
    for client_first in (f"n,,n={username},r=abc", f"n,a=admin,n={username},r=abc"):
        scram = mechanism("SCRAM-SHA-256")
        lookup = scram.start(client_first.encode())
        assert isinstance(lookup, LookupScram)
        challenges.append(scram.found(who_may_act_as(lookup.authzid, lookup.username)))
    assert challenges[0] == challenges[1]


def test_scram_a_refused_authzid_fails_on_the_second_lookup_even_with_the_right_password() -> None:
    steps = run_scram(b"n,a=admin,n=user,r=abc", "pencil", PENCIL, authorized=False)
    assert steps[2] == LookupScram("admin", "user") and steps[-1] == Failure("credentials")
    steps = run_scram(b"n,a=admin,n=user,r=abc", "pencil", PENCIL)
    assert steps[-1] == Success("admin", "user")


def decoy_challenge(username: str, salt_key: bytes | None) -> Step:
    scram = sasl_mechanism("SCRAM-SHA-256", nonce="N", scram_salt_key=salt_key)
    assert scram is not None
    scram.start(f"n,,n={username},r=abc".encode())
    return scram.found(None)


def test_scram_unknown_users_salt_comes_from_the_key_given() -> None:
    """Issue 11 (2): with a key per process, an unknown user's salt changed across workers and restarts."""
    key = b"k" * 16
    assert decoy_challenge("nobody", key) == decoy_challenge("nobody", bytes(key))  # another "process", same key
    expected = base64.b64encode(hmac.digest(key, b"smtpwire decoy salt\0nobody", "sha256")[:16])
    assert decoy_challenge("nobody", key) == Challenge(b"r=abcN,s=" + expected + b",i=4096")
    assert decoy_challenge("nobody", b"l" * 16) != decoy_challenge("nobody", key)
    assert decoy_challenge("nobody", None) == decoy_challenge("nobody", None) != decoy_challenge("nobody", key)


@pytest.mark.parametrize("key", [b"short", "a str of 16 chars", bytearray(16)])
def test_scram_salt_key_is_checked(key: object) -> None:
    with pytest.raises(ValueError, match="scram_salt_key must be at least 16 random bytes"):
        sasl_mechanism("SCRAM-SHA-256", scram_salt_key=key)  # type: ignore[arg-type]


def test_scram_unknown_user_fails_only_at_the_end_and_looks_like_a_real_one() -> None:
    steps = run_scram(b"n,,n=nobody,r=abc", "pencil", None)
    assert steps[0] == LookupScram("", "nobody")
    assert steps[-1] == Failure("credentials")
    first, again, other = (
        run_scram(f"n,,n={user},r=abc".encode(), "pw", None)[1] for user in ("nobody", "nobody", "someone")
    )
    assert isinstance(first, Challenge) and isinstance(other, Challenge)
    assert first == again != other  # a stable salt per unknown user, like a stored one
    assert first.data.startswith(b"r=abcSERVERNONCE,s=") and first.data.endswith(b",i=4096")
    assert len(base64.b64decode(first.data.split(b",")[1][2:])) == 16


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\xff",
        b"n",
        b"n,",
        b"p=tls-unique,,n=user,r=abc",
        b"x,,n=user,r=abc",
        b"N,,n=user,r=abc",
        b"n,n=user,r=abc",
        b"n,a=,n=user,r=abc",
        b"n,a=ad=2Xmin,n=user,r=abc",
        b"n,b=admin,n=user,r=abc",
        b"n,,n=user",
        b"n,,m=mandatory,n=user,r=abc",
        b"n,,n=user,r=abc,m=mandatory",
        b"n,,n=user,r=abc,1=x",
        b"n,,n=user,r=abc,x=",
        b"n,,n=user,r=abc,x",
        b"n,,n=user,r=abc,",
        b"n,,n=us=2Xer,r=abc",
        b"n,,n=user=,r=abc",
        b"n,,n=user=2,r=abc",
        b"n,,n=,r=abc",
        b"n,,n=us\x00er,r=abc",
        b"n,,u=user,r=abc",
        b"n,,n=user,x=abc",
        b"n,,n=user,r=",
        b"n,,n=user,r=a b",
        "n,,n=user,r=caf\u00e9".encode(),
        b"n,,n=\x07bell,r=abc",
        "n,,n=\u00ad,r=abc".encode(),  # empty after SASLprep
        "n,,n=\u0627\u0031,r=abc".encode(),  # bidi rule
    ],
)
def test_scram_malformed_client_first(message: bytes) -> None:
    assert mechanism("SCRAM-SHA-256").start(message) == Failure("malformed")
    scram = mechanism("SCRAM-SHA-256")
    scram.start(None)
    assert scram.respond(message) == Failure("malformed")


GOOD_FINAL = RFC7677_CLIENT_FINAL.decode()
GOOD_NONCE = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
GOOD_PROOF = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="


@pytest.mark.parametrize(
    "message",
    [
        "",
        "\udcff",
        GOOD_PROOF,
        f"{GOOD_NONCE},{GOOD_PROOF}",
        f"c=biws,{GOOD_PROOF}",
        f"c=biws,{GOOD_NONCE}",
        f"c=biws,{GOOD_NONCE},{GOOD_PROOF},",
        f"c=biws,{GOOD_NONCE},p=",
        f"c=biws,{GOOD_NONCE},x=yy",
        f"x=biws,{GOOD_NONCE},{GOOD_PROOF}",
        f"c=eSws,{GOOD_NONCE},{GOOD_PROOF}",  # "y,,": not the header the client sent
        f"c=biwsbiws,{GOOD_NONCE},{GOOD_PROOF}",
        f"c=bi*s,{GOOD_NONCE},{GOOD_PROOF}",
        f"c=biw,{GOOD_NONCE},{GOOD_PROOF}",
        f"c=biws,r=rOprNGfwEbeRWgbNEkqO,{GOOD_PROOF}",
        f"c=biws,{GOOD_NONCE}x,{GOOD_PROOF}",
        f"c=biws,{GOOD_NONCE},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ",
        f"c=biws,{GOOD_NONCE},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7And===",
        f"c=biws,{GOOD_NONCE},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQA",
        f"c=biws,{GOOD_NONCE},p=AAAA",
        f"c=biws,{GOOD_NONCE},m=x,{GOOD_PROOF}",
        f"c=biws,{GOOD_NONCE},=x,{GOOD_PROOF}",
        f"{GOOD_NONCE},c=biws,{GOOD_PROOF}",
        f"{GOOD_PROOF},c=biws,{GOOD_NONCE}",
    ],
)
def test_scram_malformed_client_final(message: str) -> None:
    scram = ScramSha256(RFC7677_SERVER_NONCE)
    scram.start(RFC7677_CLIENT_FIRST)
    scram.found(PENCIL)
    assert scram.respond(message.encode("utf-8", "surrogateescape")) == Failure("malformed")


def test_scram_proof_for_another_message_fails() -> None:
    scram = ScramSha256(RFC7677_SERVER_NONCE)
    scram.start(RFC7677_CLIENT_FIRST)
    scram.found(PENCIL)
    # A well-formed extension changes the AuthMessage, so the RFC proof no longer fits.
    assert scram.respond(f"c=biws,{GOOD_NONCE},x=y,{GOOD_PROOF}".encode()) == Failure("credentials")


# --- stored SCRAM credentials -------------------------------------------------


def test_scram_credentials_rfc7677() -> None:
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC7677_SALT, 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    expected = ScramCredentials(RFC7677_SALT, 4096, hashlib.sha256(client_key).digest(), server_key)
    assert expected == PENCIL


def test_scram_credentials_defaults_and_saslprep() -> None:
    one, two = scram_credentials("pencil"), scram_credentials("pencil")
    assert len(one.salt) == 16 and one.salt != two.salt and one.iterations == 4096
    assert scram_credentials("I\u00adX", salt=b"s") == scram_credentials("IX", salt=b"s")
    assert scram_credentials("\u2168", salt=b"s") == scram_credentials("IX", salt=b"s")


@pytest.mark.parametrize("iterations", [4095, 0, -1, True, 4096.0])
def test_scram_credentials_iterations(iterations: object) -> None:
    with pytest.raises(ValueError, match="from 4096 to"):
        scram_credentials("pencil", iterations=iterations)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "password", ["", "\u00ad", "secret\x07", "secret\u0221", "\u0627secret", "secret\ud800", "\u0627x\u0628"]
)
def test_scram_credentials_refuse_unusable_passwords_without_quoting_them(password: str) -> None:
    with pytest.raises(ValueError) as info:
        scram_credentials(password)
    assert password not in str(info.value) or not password


@pytest.mark.parametrize(
    "fields",
    [
        (b"", 4096, b"k" * 32, b"k" * 32),
        ("salt", 4096, b"k" * 32, b"k" * 32),
        (b"s", 0, b"k" * 32, b"k" * 32),
        (b"s", True, b"k" * 32, b"k" * 32),
        (b"s", "4096", b"k" * 32, b"k" * 32),
        (b"s", 4096, b"k" * 31, b"k" * 32),
        (b"s", 4096, b"k" * 32, b"k" * 33),
        (b"s", 4096, b"k" * 32, "k" * 32),
    ],
)
def test_scram_credentials_are_checked(fields: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        ScramCredentials(*fields)  # type: ignore[arg-type]


def test_scram_credentials_repr_hides_the_keys() -> None:
    text = repr(PENCIL)
    assert PENCIL.stored_key.hex() not in text and repr(PENCIL.stored_key) not in text
    assert repr(PENCIL.server_key) not in text and "salt=" in text


# --- SASLprep (RFC 4013) ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "prepared"),
    [("I\u00adX", "IX"), ("user", "user"), ("USER", "USER"), ("\u00aa", "a"), ("\u2168", "IX")],
)
def test_saslprep_rfc4013_examples(text: str, prepared: str) -> None:
    assert saslprep(text) == prepared


@pytest.mark.parametrize("text", ["\u0007", "\u0627\u0031"])
def test_saslprep_rfc4013_errors(text: str) -> None:
    with pytest.raises(ValueError, match="SASLprep"):
        saslprep(text)


def test_saslprep_details() -> None:
    assert saslprep("a\u00a0b\u3000c") == "a b c"  # non-ASCII spaces
    assert saslprep("a\u200bb\ufeff") == "ab"  # mapped to nothing
    assert saslprep("\u0627\u0031\u0628") == "\u0627\u0031\u0628"  # RandALCat first and last
    assert saslprep("") == ""
    assert saslprep("\u0221", allow_unassigned=True) == "\u0221"  # unassigned in Unicode 3.2
    for text in ("\u0221", "\u0627a\u0628", "a\u0627", "\ue000", "a\u200eb", "\ufffd", "\U000e0001"):
        with pytest.raises(ValueError):
            saslprep(text)


# --- CRAM-MD5 (RFC 2195) ---------------------------------------------------

RFC2195_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"


def test_cram_md5_rfc2195_example() -> None:
    cram = CramMd5(RFC2195_CHALLENGE)
    assert cram.start(None) == Challenge(RFC2195_CHALLENGE)
    assert cram.respond(b"tim b913a602c7eda7a495b4e6e7334d3890") == LookupPassword("tim")
    assert cram.found("tanstaaftanstaaf") == Success("", "tim")


def test_cram_md5_uppercase_digest_and_spaces_in_the_name() -> None:
    cram = CramMd5(RFC2195_CHALLENGE)
    cram.start(None)
    digest = hmac.new(b"tanstaaftanstaaf", RFC2195_CHALLENGE, "md5").hexdigest().upper()
    assert cram.respond(b"tim the enchanter " + digest.encode()) == LookupPassword("tim the enchanter")
    assert cram.found("tanstaaftanstaaf") == Success("", "tim the enchanter")


@pytest.mark.parametrize("password", [None, "wrong", ""])
def test_cram_md5_wrong_or_unknown(password: str | None) -> None:
    cram = CramMd5(RFC2195_CHALLENGE)
    cram.start(None)
    cram.respond(b"tim b913a602c7eda7a495b4e6e7334d3890")
    assert cram.found(password) == Failure("credentials")


@pytest.mark.parametrize("initial", [b"", b"tim b913a602c7eda7a495b4e6e7334d3890"])
def test_cram_md5_refuses_an_initial_response(initial: bytes) -> None:
    assert CramMd5(RFC2195_CHALLENGE).start(initial) == Failure("malformed")


@pytest.mark.parametrize(
    "response",
    [
        b"",
        b"timb913a602c7eda7a495b4e6e7334d3890",
        b" b913a602c7eda7a495b4e6e7334d3890",
        b"tim b913a602c7eda7a495b4e6e7334d389",
        b"tim b913a602c7eda7a495b4e6e7334d38900",
        b"tim g913a602c7eda7a495b4e6e7334d3890",
        b"tim b913a602c7eda7a495b4e6e7334d3890 ",
        b"t\xffm b913a602c7eda7a495b4e6e7334d3890",
        b"t\0m b913a602c7eda7a495b4e6e7334d3890",
        b"u" * 256 + b" b913a602c7eda7a495b4e6e7334d3890",
    ],
)
def test_cram_md5_malformed(response: bytes) -> None:
    cram = CramMd5(RFC2195_CHALLENGE)
    cram.start(None)
    assert cram.respond(response) == Failure("malformed")


# --- secrets stay out of reprs -------------------------------------------------


def test_reprs_never_show_the_password() -> None:
    password = "hunter2-secret"
    plain = mechanism("PLAIN")
    login = mechanism("LOGIN")
    steps: list[object] = [plain.start(b"\0tim\0" + password.encode()), plain.verified(True)]
    steps += [login.start(b"tim"), login.respond(password.encode()), login.verified(False)]
    steps += [plain, login, scram_credentials(password)]
    assert steps[0] == CheckPassword("", "tim", password)
    for step in steps:
        assert password not in repr(step)
        assert password not in str(step)


TEXT = st.characters(exclude_categories=("Cs",))


@given(st.text(TEXT, min_size=1, max_size=60).filter(lambda p: "\0" not in p and len(p.encode()) <= 240))
def test_check_password_repr_hides_any_password(password: str) -> None:
    secret = "S3cr3t:" + password
    for mechanism_name, message in (
        ("PLAIN", b"\0tim\0" + secret.encode()),
        ("LOGIN", secret.encode()),
    ):
        m = mechanism(mechanism_name)
        step = m.start(message) if mechanism_name == "PLAIN" else (m.start(b"tim") and m.respond(message))
        assert step == CheckPassword("", "tim", secret)
        assert secret not in repr(step)


# --- properties -------------------------------------------------------------

PASSWORD = "pencil"
STORED = {"user": PENCIL}


def drive(m: Mechanism, initial: bytes | None, responses: list[bytes]) -> Step:
    """Play the application honestly; return the last step (or the pending challenge)."""
    step = m.start(initial)
    replies = iter(responses)
    checked_ok = False
    while True:
        assert isinstance(step, Challenge | CheckPassword | LookupScram | LookupPassword | Success | Failure)
        if isinstance(step, Challenge):
            reply = next(replies, None)
            if reply is None:
                return step
            step = m.respond(reply)
        elif isinstance(step, CheckPassword):
            checked_ok = step.username == "user" and step.password == PASSWORD
            step = m.verified(checked_ok)
        elif isinstance(step, LookupScram):
            step = m.found(STORED.get(step.username))
        elif isinstance(step, LookupPassword):
            step = m.found(PASSWORD if step.username == "user" else None)
        else:
            if isinstance(step, Success):
                assert checked_ok, "Success without the application's approval"
            else:
                assert step.kind in ("malformed", "credentials")
            return step


ALL = ["PLAIN", "LOGIN", "SCRAM-SHA-256", "CRAM-MD5"]


@settings(max_examples=400)
@given(
    st.sampled_from(ALL),
    st.none() | st.binary(max_size=300),
    st.lists(st.binary(max_size=300), max_size=5),
)
def test_random_bytes_only_ever_give_steps(name: str, initial: bytes | None, responses: list[bytes]) -> None:
    drive(mechanism(name), initial, responses)


SCRAM_PIECES = st.sampled_from(
    ["n", "y", "p=x", "", "a=u", "n=user", "n=u=2Cs", "r=abc", "r=", "c=biws", "c=eSws", "p=AAAA", "x=1", "m=1", "="]
)
SCRAM_MESSAGES = st.lists(SCRAM_PIECES | st.text(max_size=8), max_size=7).map(lambda parts: ",".join(parts).encode())


@settings(max_examples=400)
@given(st.none() | SCRAM_MESSAGES, st.lists(SCRAM_MESSAGES | st.just(RFC7677_CLIENT_FIRST), max_size=4))
def test_scram_near_misses_never_succeed(initial: bytes | None, responses: list[bytes]) -> None:
    step = drive(ScramSha256(RFC7677_SERVER_NONCE), initial, responses)
    assert not isinstance(step, Success)


@settings(max_examples=200)
@given(st.binary(max_size=200) | SCRAM_MESSAGES, st.binary(max_size=20))
def test_scram_random_client_final_never_succeeds(final: bytes, ack: bytes) -> None:
    step = drive(ScramSha256(RFC7677_SERVER_NONCE), RFC7677_CLIENT_FIRST, [final, ack])
    assert not isinstance(step, Success)


@settings(max_examples=200)
@given(st.sampled_from([b"user", b"tim", b"User"]), st.binary(min_size=16, max_size=16))
def test_cram_md5_random_digests_never_succeed(user: bytes, digest: bytes) -> None:
    step = drive(mechanism("CRAM-MD5"), None, [user + b" " + digest.hex().encode()])
    assert not isinstance(step, Success)


def prepared_or_none(text: str, allow_unassigned: bool) -> str | None:
    try:
        return saslprep(text, allow_unassigned=allow_unassigned)
    except ValueError:
        return None


# Mostly names SASLprep keeps, with the characters that need escaping, mapping or NFKC.
NAME = st.characters(min_codepoint=0x20, max_codepoint=0x220, exclude_categories=("Cc",)) | st.sampled_from(
    [",", "=", "\u00a0", "\u00ad", "\u2168", "\u00aa", "\u3000", "\u0627", "\U0001f600"]
)


@settings(max_examples=50, deadline=None)
@given(st.text(NAME, min_size=1, max_size=20), st.text(NAME, min_size=1, max_size=20), st.text(NAME, max_size=10))
def test_scram_round_trip_with_any_names(username: str, password: str, authzid: str) -> None:
    prepared = prepared_or_none(username, True)
    assume(prepared and "\0" not in authzid and prepared_or_none(password, False))
    assert prepared is not None

    def escape(name: str) -> str:
        return name.replace("=", "=3D").replace(",", "=2C")

    gs2 = f"n,{'a=' + escape(authzid) if authzid else ''},"
    client_first = f"{gs2}n={escape(username)},r=clientnonce".encode()
    stored = scram_credentials(password)
    scram = mechanism("SCRAM-SHA-256")
    assert scram.start(client_first) == LookupScram("", prepared)
    server_first = scram.found(stored)
    assert isinstance(server_first, Challenge)
    final = scram_client_final(client_first, server_first.data, password)
    assert scram.respond(final) == LookupScram(authzid, prepared)
    assert scram.found(stored) == Challenge(scram_server_final(server_first.data, final, password, client_first))
    assert scram.respond(b"") == Success(authzid, prepared)


def test_scram_client_nonce_is_bounded_so_the_challenge_fits_a_reply_line() -> None:
    longest = "n,,n=" + "u" * 255 + ",r=" + "x" * MAX_CLIENT_NONCE
    scram = sasl_mechanism("SCRAM-SHA-256", nonce="n" * MAX_SERVER_NONCE)
    assert scram is not None and isinstance(scram.start(longest.encode()), LookupScram)
    server_first = scram.found(ScramCredentials(b"s" * MAX_SALT, MAX_ITERATIONS, b"k" * 32, b"k" * 32))
    assert isinstance(server_first, Challenge) and len(base64.b64encode(server_first.data)) + 6 <= 512
    assert mechanism("SCRAM-SHA-256").start((longest + "x").encode()) == Failure("malformed")
    with pytest.raises(ValueError, match="nonce"):
        sasl_mechanism("SCRAM-SHA-256", nonce="n" * (MAX_SERVER_NONCE + 1))
    with pytest.raises(ValueError, match="salt"):
        ScramCredentials(b"s" * (MAX_SALT + 1), 4096, b"k" * 32, b"k" * 32)
    with pytest.raises(ValueError, match="iterations"):
        ScramCredentials(b"s", MAX_ITERATIONS + 1, b"k" * 32, b"k" * 32)


@pytest.mark.parametrize("name", ["ali\u0085ce", "alice\u2028", "\u202eecila", "al\x1bice", "alice\u200f"])
def test_user_names_with_controls_or_bidi_controls_are_malformed(name: str) -> None:
    """They would reach the application's logs as is (issue 11: header and log injection)."""
    encoded = name.encode()
    assert mechanism("PLAIN").start(b"\0" + encoded + b"\0secret") == Failure("malformed")
    assert mechanism("PLAIN").start(encoded + b"\0alice\0secret") == Failure("malformed")  # as authzid
    login = mechanism("LOGIN")
    assert login.start(None) == Challenge(b"Username:")
    assert login.respond(encoded) == Failure("malformed")
    assert mechanism("PLAIN").start("\0élise\0sécret".encode()) == CheckPassword("", "élise", "sécret")
