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
over ``max_connections_per_client``         ``421 4.7.0`` greeting, then close
command line over 4,096 octets              ``500 5.5.2`` (the line is read and dropped)
MAIL before STARTTLS (``require_tls``)      ``530 5.7.0``
MAIL before AUTH (``auth = "required"``)    ``530 5.7.0``
AUTH before STARTTLS                        ``538 5.7.11``
AUTH with a wrong user or password          ``535 5.7.8``
too many failed AUTHs from one address      ``421 4.7.0``, then close
client certificate missing or not named     ``554 5.7.1`` to every command after STARTTLS
in ``tls_client_names``
STARTTLS inside TLS                         ``554 5.5.1``
DATA phase longer than ``data_deadline``    ``421 4.4.2``, then close
any command but QUIT when no message came   ``421 4.4.2``, then close
for longer than ``timeout`` (RCPT, DATA,
NOOP, RSET in a transaction: within
``timeout`` of its MAIL)
MAIL or DATA while shutting down            ``421 4.3.2``, then close
==========================================  =================================================


LMTP answers once per accepted RCPT after DATA, in RCPT order (RFC 2033 4.2); SMTP answers once.
After LHLO/EHLO every 2xx, 4xx and 5xx reply carries an RFC 3463 status code
(:func:`with_status_code`; ENHANCEDSTATUSCODES, which RFC 2033 5 requires).
The handler (:mod:`sink.sources.smtp_handler`) and the protocol
(:mod:`sink.sources.smtp_protocol`) take their texts from here.
"""

from __future__ import annotations

import re

from sink.errors import classify

REPLY_TRANSIENT = "451 4.3.0 Temporary storage failure, try again later"
REPLY_NO_SPACE = "452 4.3.1 Insufficient system storage, try again later"
REPLY_TOO_BIG = "552 5.3.4 Message too big for this system"
REPLY_TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
REPLY_NOT_ALLOWED = "554 5.7.1 Your address is not allowed to use this service"
REPLY_BUSY = "421 4.7.0 Too many connections, try again later"
REPLY_BUSY_CLIENT = "421 4.7.0 Too many connections from your address, try again later"
REPLY_LINE_TOO_LONG = "500 5.5.2 Line too long"
REPLY_NEED_TLS = "530 5.7.0 Must issue a STARTTLS command first"
REPLY_AUTH_BLOCKED = "421 4.7.0 Too many failed authentication attempts, try again later"
REPLY_CERT_REFUSED = "554 5.7.1 Client certificate not accepted"
REPLY_TLS_ACTIVE = "554 5.5.1 Error: TLS already active"      # Postfix's words (RFC 3207 4)
REPLY_DATA_DEADLINE = "421 4.4.2 DATA took too long, closing connection"
REPLY_NO_MAIL = "421 4.4.2 No message within {seconds:.0f} seconds, closing connection"
REPLY_SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"

# aiosmtpd's own replies that must not reach an MTA as they are (a bare 500 for a long line
# would bounce the message; its 552 has no enhanced status code).
REWRITE = {
    "552 Error: Too much mail data": REPLY_TOO_BIG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": REPLY_TOO_BIG,
    "500 Command line too long": REPLY_LINE_TOO_LONG,
    "554 Command refused due to lack of security": REPLY_CERT_REFUSED,
}


# ENHANCEDSTATUSCODES (RFC 2034; RFC 2033 5 requires it of an LMTP server): once the client
# said EHLO or LHLO, every 2xx, 4xx and 5xx reply but the greeting and the hello's own (which
# commands are the hello: sink.sources.smtp_protocol) carries an RFC 3463 status code. Ours
# have theirs; aiosmtpd's get the one Postfix gives the same reply, by its code, else the
# class's "other" (X.0.0).
_REPLY_CODE = re.compile(r"[245]\d\d(?:[ -]|$)")
_STATUS_CODE = re.compile(r"[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
STATUS_FOR_CODE = {
    "221": "2.0.0", "250": "2.0.0", "252": "2.0.0",
    "421": "4.3.0", "451": "4.3.0", "454": "4.7.0",
    "500": "5.5.2",         # syntax error, command unrecognized
    "501": "5.5.4",         # syntax error in parameters or arguments
    "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "552": "5.3.4", "553": "5.1.3", "555": "5.5.4",
}


def with_status_code(reply: str) -> str:
    """``reply`` (one or more lines) with a status code on each 2xx/4xx/5xx line without one."""
    if "\r\n" not in reply and (_STATUS_CODE.match(reply) or not _REPLY_CODE.match(reply)):
        return reply                    # most replies: one line with its code, or a 3xx
    lines = reply.split("\r\n")
    for i, line in enumerate(lines):
        code, separator, text = line[:3], line[3:4] or " ", line[4:]
        if not _REPLY_CODE.match(line) or _STATUS_CODE.match(line):
            continue                    # a 3xx, not a reply line, or one with its code
        status = STATUS_FOR_CODE.get(code, f"{code[0]}.0.0")
        lines[i] = f"{code}{separator}{status} {text}".rstrip(" ")
    return "\r\n".join(lines)


def reply_for(error: BaseException) -> str:
    transient = classify(error)
    if transient is not None and transient.no_space:
        return REPLY_NO_SPACE
    return REPLY_TRANSIENT

