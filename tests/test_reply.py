import pytest

from smtpwire import LocalProtocolError, Reply


def test_single_line_with_enhanced_code() -> None:
    assert Reply(250, "OK", (2, 1, 0)).to_bytes() == b"250 2.1.0 OK\r\n"


def test_default_enhanced_code_is_class_zero_zero() -> None:
    assert Reply(451, "try later").to_bytes() == b"451 4.0.0 try later\r\n"


def test_enhanced_codes_can_be_left_out() -> None:
    assert Reply(250, "OK", (2, 1, 0)).to_bytes(enhanced_codes=False) == b"250 OK\r\n"


def test_multiline() -> None:
    assert Reply(250, ["a", "b", "c"]).to_bytes(False) == b"250-a\r\n250-b\r\n250 c\r\n"


def test_3xx_never_carries_enhanced_code() -> None:
    assert Reply(354, "go ahead").to_bytes() == b"354 go ahead\r\n"
    with pytest.raises(LocalProtocolError):
        Reply(354, "go", (3, 0, 0))


def test_empty_text_has_no_trailing_space() -> None:
    assert Reply(250).to_bytes(False) == b"250\r\n"
    assert Reply(250, ["", "x"]).to_bytes(False) == b"250-\r\n250 x\r\n"


def test_lines_property() -> None:
    assert Reply(250, "x").lines == ("x",)


@pytest.mark.parametrize("code", [199, 600, 260, 0, "250", 2.5])
def test_invalid_codes(code: object) -> None:
    with pytest.raises(LocalProtocolError):
        Reply(code, "x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text", [[], ["a\r\nb"], ["tab\tnot allowed"], ["nul\x00"], ["del\x7f"], ["x" * 497], [b"bytes"]]
)
def test_invalid_text(text: object) -> None:
    with pytest.raises(LocalProtocolError):
        Reply(250, text)  # type: ignore[arg-type]


def test_longest_line_fits_512_octets() -> None:
    line = Reply(550, "x" * 496, (5, 999, 999)).to_bytes()
    assert len(line) == 512


@pytest.mark.parametrize("enhanced", [(5, 0, 0), (2, 1000, 0), (2, 0, -1)])
def test_enhanced_code_must_fit(enhanced: tuple[int, int, int]) -> None:
    with pytest.raises(LocalProtocolError):
        Reply(250, "x", enhanced)


def test_is_positive() -> None:
    assert Reply(354, "x").is_positive and Reply(250).is_positive and not Reply(421).is_positive
