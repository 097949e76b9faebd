import pytest

import smtpwire
from smtpwire import ServerConfig


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hostname": ""}, "hostname must be"),
        ({"hostname": "has space"}, "hostname must be"),
        ({"hostname": None}, "hostname must be"),
        ({"max_message_size": 0}, "max_message_size must be an integer of at least 1"),
        ({"max_recipients": "100"}, "max_recipients must be an integer"),
        ({"max_errors": True}, "max_errors must be an integer"),
        ({"max_command_line": 100}, "max_command_line must be an integer of at least 512"),
        ({"bare_line_endings": "fix"}, "bare_line_endings must be one of"),
        ({"extensions": ("SIZE",)}, "extensions must be Extension instances"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig(**kwargs)  # type: ignore[arg-type]


def test_defaults_are_bounded() -> None:
    config = ServerConfig()
    assert config.max_message_size == 32 * 1024 * 1024
    assert config.max_recipients == 100
    assert config.bare_line_endings == "reject"
    assert [e.keyword for e in config.extensions] == [
        "PIPELINING",
        "SIZE",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ]
    assert smtpwire.StartTLS().keyword == "STARTTLS"
