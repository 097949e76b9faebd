"""smtpwire: a bring-your-own-I/O ESMTP server protocol library.

The core is a pure state machine: feed it bytes, read events, answer the
decisions, send what it queues.  It does no I/O and reads no clock.
"""

from ._auth import KNOWN_MECHANISMS, Auth
from ._config import ServerConfig
from ._connection import NEED_DATA, PAUSED, Sentinel, ServerConnection, Transaction
from ._dsn import Dsn, MailDsn, OriginalRecipient, RcptDsn, xtext_decode, xtext_encode
from ._errors import LocalProtocolError
from ._events import (
    AuthCredentials,
    Authenticated,
    ChunkReceived,
    CommandRejected,
    ConnectionClosed,
    ConnectionOpened,
    CredentialsLookup,
    DataRequested,
    Decision,
    Ehlo,
    EndOfMessage,
    Event,
    ExtensionCommand,
    Helo,
    Help,
    MailFrom,
    MessageData,
    MessageRejected,
    Noop,
    Quit,
    RcptTo,
    Rset,
    StartTLSRequested,
    Vrfy,
)
from ._extensions import (
    STANDARD_EXTENSIONS,
    BinaryMime,
    Chunking,
    EightBitMime,
    EnhancedStatusCodes,
    Extension,
    Extensions,
    Pipelining,
    Size,
    SmtpUtf8,
    StartTLS,
    Verb,
)
from ._policy_extensions import Limits, RequireTls
from ._proxy import ProxyHeader, ProxyReader, ProxyRefused, ProxySSL
from ._reply import Reply
from ._sasl import ScramCredentials, saslprep, scram_credentials
from ._state import State

__version__ = "0.1.0"

__all__ = [
    "KNOWN_MECHANISMS",
    "NEED_DATA",
    "PAUSED",
    "STANDARD_EXTENSIONS",
    "Auth",
    "AuthCredentials",
    "Authenticated",
    "BinaryMime",
    "ChunkReceived",
    "Chunking",
    "CommandRejected",
    "ConnectionClosed",
    "ConnectionOpened",
    "CredentialsLookup",
    "DataRequested",
    "Decision",
    "Dsn",
    "Ehlo",
    "EightBitMime",
    "EndOfMessage",
    "EnhancedStatusCodes",
    "Event",
    "Extension",
    "ExtensionCommand",
    "Extensions",
    "Helo",
    "Help",
    "Limits",
    "LocalProtocolError",
    "MailDsn",
    "MailFrom",
    "MessageData",
    "MessageRejected",
    "Noop",
    "OriginalRecipient",
    "Pipelining",
    "ProxyHeader",
    "ProxyReader",
    "ProxyRefused",
    "ProxySSL",
    "Quit",
    "RcptDsn",
    "RcptTo",
    "Reply",
    "RequireTls",
    "Rset",
    "ScramCredentials",
    "Sentinel",
    "ServerConfig",
    "ServerConnection",
    "Size",
    "SmtpUtf8",
    "StartTLS",
    "StartTLSRequested",
    "State",
    "Transaction",
    "Verb",
    "Vrfy",
    "saslprep",
    "scram_credentials",
    "xtext_decode",
    "xtext_encode",
]
