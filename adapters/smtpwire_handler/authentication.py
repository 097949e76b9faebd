"""Sender authentication for any adapter: the stock handlers and the DNS resolvers that answer their checks.

Needs the ``verify`` extra (dkimpy, authres, publicsuffixlist, dnspython),
which is why these names are here rather than in ``smtpwire_handler``
itself.  The checks are ``smtpwire_verify``'s; see docs/authentication.md.
"""

from smtpwire_verify import METHODS, Verdict

from ._authentication import SENDER_VERDICT, AsyncSenderAuthentication, SenderAuthentication, Verification
from ._resolver import AsyncResolver, DNSCache, Resolver

__all__ = [
    "METHODS",
    "SENDER_VERDICT",
    "AsyncResolver",
    "AsyncSenderAuthentication",
    "DNSCache",
    "Resolver",
    "SenderAuthentication",
    "Verdict",
    "Verification",
]
