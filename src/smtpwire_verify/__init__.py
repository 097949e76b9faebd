"""Sender authentication (SPF, DKIM, DMARC, ARC) without I/O: checks ask DNS questions and are given answers.

``run(Check(check_spf(ip, mail_from, helo)), resolve)`` drives one check
with a function answering a ``DNSQuery`` with a ``DNSAnswer``; an adapter
answers ``Check.queries()`` its own way (``smtpwire_handler.authentication``
does it with dnspython).  ``verify_sender`` and ``verify_message`` run them
as a receiving server does: SPF at MAIL, the rest at the end of data.
"""

from ._arc import ARCResult, check_arc
from ._author import author_domains
from ._check import Check, Steps, ask, ask_one, gather, run
from ._dkim import DKIMResult, check_dkim
from ._dmarc import DMARCRecord, DMARCResult, DMARCSyntaxError, check_dmarc, organizational_domain, parse_dmarc
from ._dns import NODATA, NXDOMAIN, TEMPFAIL, DNSAnswer, DNSQuery, DNSStatus, RRType
from ._header import authentication_results, remove_claims
from ._results import MethodResult
from ._spf import SPFResult, check_host, check_spf
from ._spf_record import SPFRecord, SPFSyntaxError, parse_record
from ._verifier import METHODS, Verdict, methods_from, verify_message, verify_sender

__all__ = [
    "METHODS",
    "NODATA",
    "NXDOMAIN",
    "TEMPFAIL",
    "ARCResult",
    "Check",
    "DKIMResult",
    "DMARCRecord",
    "DMARCResult",
    "DMARCSyntaxError",
    "DNSAnswer",
    "DNSQuery",
    "DNSStatus",
    "MethodResult",
    "RRType",
    "SPFRecord",
    "SPFResult",
    "SPFSyntaxError",
    "Steps",
    "Verdict",
    "ask",
    "ask_one",
    "authentication_results",
    "author_domains",
    "check_arc",
    "check_dkim",
    "check_dmarc",
    "check_host",
    "check_spf",
    "gather",
    "methods_from",
    "organizational_domain",
    "parse_dmarc",
    "parse_record",
    "remove_claims",
    "run",
    "verify_message",
    "verify_sender",
]
