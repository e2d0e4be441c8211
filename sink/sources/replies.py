"""Every reply a mail administrator sees from a listener, in one table.

==========================================  =================================================
situation                                   reply
==========================================  =================================================
RCPT for an address that is not a box       ``550 5.1.1`` at RCPT
more RCPTs than ``max_recipients``          ``452 4.5.3`` (the client sends the rest later)
message over ``max_message_size``           ``552 5.3.4`` (after the data, RFC 5321 4.2.5)
stored and processed (or rules failed:      ``250 2.0.0`` with the stored message id
stored as ``failed`` for replay)
database or storage unavailable             ``451 4.3.0`` - the MTA keeps it and retries
out of disk or database space               ``452 4.3.1``
any error of our own                        ``451 4.3.0`` (never aiosmtpd's default ``500``)
client outside ``allowed_networks``         ``554 5.7.1`` greeting, then close
over ``max_connections``                    ``421 4.7.0`` greeting, then close
==========================================  =================================================


LMTP answers once per accepted RCPT after DATA, in RCPT order (RFC 2033 4.2); SMTP answers once.
The handler (:mod:`sink.sources.smtp_handler`) and the protocol
(:mod:`sink.sources.smtp_protocol`) take their texts from here.
"""

from __future__ import annotations

from sink.errors import classify

REPLY_TRANSIENT = "451 4.3.0 Temporary storage failure, try again later"
REPLY_NO_SPACE = "452 4.3.1 Insufficient system storage, try again later"
REPLY_TOO_BIG = "552 5.3.4 Message too big for this system"
REPLY_TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
REPLY_NOT_ALLOWED = "554 5.7.1 Your address is not allowed to use this service"
REPLY_BUSY = "421 4.7.0 Too many connections, try again later"

# aiosmtpd's own replies that must not reach an MTA as they are (a bare 500 for a long line
# would bounce the message; its 552 has no enhanced status code).
REWRITE = {
    "552 Error: Too much mail data": REPLY_TOO_BIG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": REPLY_TOO_BIG,
}


def reply_for(error: BaseException) -> str:
    transient = classify(error)
    if transient is not None and transient.no_space:
        return REPLY_NO_SPACE
    return REPLY_TRANSIENT

