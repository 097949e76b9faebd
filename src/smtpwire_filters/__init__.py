"""The protocols smtpwire hands decisions to, without I/O: Sendmail's milter protocol, Postfix's policy delegation.

``MilterSession`` is the MTA's side of one milter connection (version 6,
as Postfix speaks it): it gives the bytes of each stage's command and
reads the milter's replies into events, knowing from the negotiation which
stages the milter skips and which replies it will not send.
``policy_request`` and ``PolicyReplyReader`` are the two halves of
Postfix's policy delegation protocol.  The I/O that runs them is the
adapters' (``smtpwire_handler.filters``).
"""

from . import _milter_codec as milter_codec
from ._milter import EnvelopeChanges, MilterMessage, MilterSession, Outcome, Step
from ._milter_codec import (
    Accept,
    AddHeader,
    AddRecipient,
    ChangeHeader,
    ChangeSender,
    Continue,
    DeleteRecipient,
    Discard,
    InsertHeader,
    MilterError,
    Negotiated,
    Progress,
    Quarantine,
    Reject,
    ReplaceBody,
    ReplyCode,
    Skip,
    Tempfail,
)
from ._policy import (
    PolicyAction,
    PolicyKind,
    PolicyReplyError,
    PolicyReplyReader,
    parse_action,
    parse_policy_reply,
    policy_request,
)

__all__ = [
    "Accept",
    "AddHeader",
    "AddRecipient",
    "ChangeHeader",
    "ChangeSender",
    "Continue",
    "DeleteRecipient",
    "Discard",
    "EnvelopeChanges",
    "InsertHeader",
    "MilterError",
    "MilterMessage",
    "MilterSession",
    "Negotiated",
    "Outcome",
    "PolicyAction",
    "PolicyKind",
    "PolicyReplyError",
    "PolicyReplyReader",
    "Progress",
    "Quarantine",
    "Reject",
    "ReplaceBody",
    "ReplyCode",
    "Skip",
    "Step",
    "Tempfail",
    "milter_codec",
    "parse_action",
    "parse_policy_reply",
    "policy_request",
]
