"""Hard or soft (SPEC 5 step 8): only "the mailbox or domain does not exist" is hard.

Hard: enhanced status 5.1.x about the recipient (5.1.0-5.1.6, 5.1.10: bad mailbox, bad
domain, moved, null MX), 5.2.1 (mailbox disabled), 5.4.4 (no route: the domain does not
resolve - unless the words say the DNS answer was only broken), or those words in the
diagnostic text, in several languages. Soft: everything else - every 4.x.x, a full mailbox,
a message too big, greylisting, timeouts, spam and policy refusals, and above all refusals
that are our own server's fault (its IP on a blacklist, no reverse DNS, SPF/DKIM/DMARC, rate
limits): a blacklisting of the company's outbound IP must never mark healthy addresses dead.

The order matters: our own server's fault first (blacklists, rDNS, SPF/DKIM/DMARC, the
sender's address, rate limits); a null MX is final whatever code a report chose; then words
that put the blame on the content or a policy win over a status code (servers say "550 5.1.1"
for a filter) unless words of a dead mailbox come first in the reply; then a 4.x.x status is
soft, then the status, then the words. A report of the seed's forms with neither a status nor
a reason counts as hard (seed 000); any other such report is soft.
"""

from __future__ import annotations

import re

from sink.mail.textnorm import fold

HARD, SOFT = "hard", "soft"
HARD_STATUS = re.compile(r"^5\.1\.(?:[0-6]|10)$|^5\.2\.1$|^5\.4\.4$")

# Our own server's or sender's fault, whatever else a reply says: never hard.
_OURS = re.compile("|".join((
    r"spamhaus|spamcop|barracuda|sorbs|\bdnsbl|\brbl\b|blacklist|blocklist|block list|"
    r"black list|bad reputation|poor reputation|open relay|no access from mail server",
    r"reverse dns|rdns|\bptr\b|reverse (?:lookup|hostname)|no reverse",
    r"\bspf\b|\bdkim\b|\bdmarc\b|sender address|sender domain|after mail from|"
    r"rate limit|\brate\b|not found, try again|my name was rejected|\bhelo\b|\behlo\b",
)), re.IGNORECASE)
# Statuses that name a soft reason themselves: a full mailbox, a message too big.
_SOFT_STATUS = re.compile(r"^5\.2\.[23]$|^5\.3\.4$")
_SENDER_STATUS = re.compile(r"^5\.1\.[78]$|^5\.7\.(?:2[3-9]|1[0-9])$")

# The sender's, the content's or a policy's fault, or temporary: not hard unless the words
# of a dead mailbox come first.
_SOFT_WORDS = re.compile("|".join((
    r"spamhaus|spamcop|barracuda|sorbs|\bdnsbl|\brbl\b|blacklist|blocklist|block list|"
    r"black list|listed (?:at|on|in|by)|blocked (?:using|by|because)|bad reputation|"
    r"reputation|poor reputation|ip (?:address )?(?:is |was |has been )?(?:blocked|banned)|"
    r"client host .{0,80}blocked|access denied|not allowed to send",
    r"reverse dns|rdns|\bptr\b|reverse (?:lookup|hostname)|no reverse|hostname does not",
    r"\bspf\b|\bdkim\b|\bdmarc\b|authenticat|sender (?:address )?(?:rejected|verify|domain)|"
    r"sender address|relay(?:ing)? (?:access )?denied|not permitted to relay|unauthenticated",
    r"rate limit|too many (?:messages|connections|recipients|emails|mails)|try (?:again )?later|"
    r"exceeded|temporar|greylist|graylist|deferred|timed? ?out|timeout|connection refused|"
    r"failing|is full\b|could not connect|unable to connect|requests to connect|"
    r"connection (?:reset|lost|closed|dropped)|protocol error|unable to contact|"
    r"malformed or unexpected name server reply|"
    r"too busy|throttl|resources|not responding|giving up|aborted after|"
    r"\d+ attempts|retries|for the last \d+|expired|permission|recipient preferences|"
    r"refused due",
    r"mailbox (?:is )?full|over quota|quota|insufficient (?:storage|space)|mailbox size|"
    r"disk full|postfach voll|boite pleine|storage space",
    r"too (?:big|large|long)|size limit|message size|exceeds|message length",
    r"\bspam\b|junk|virus|malware|content (?:rejected|filter)|policy|not compliant|"
    r"\bfiltered\b|filter|rejected for policy|suspicious|phish|looks like|unsolicited",
)), re.IGNORECASE)

# The mailbox or the domain does not exist (also for reports without a usable status).
_HARD_WORDS = re.compile("|".join((
    r"user unknown|unknown user|unknown (?:local[- ]part|recipient|address|mailbox)|"
    r"no such (?:user|mailbox|recipient|address|account|person|local user)|"
    r"user (?:not found|doesn'?t exist|does not exist|not exist)|"
    r"(?:mailbox|recipient|address|account|user|addressee) (?:is )?(?:unknown|not found|"
    r"does not exist|doesn'?t exist|unavailable: user|invalid|not valid)|"
    r"invalid (?:recipient|mailbox|address|user)|not a valid (?:mailbox|recipient|user)|"
    r"no mailbox (?:here|by that name)|mailbox not found|recipient not found|"
    r"mailbox (?:is )?unavailable|"
    r"recipientnotfound|address rejected: user unknown|unrouteable address|unroutable|"
    r"does not have an account|no longer (?:on server|valid|exists|with)|has moved|"
    r"couldn'?t be found|could not be found|address couldn'?t be found|"
    r"not our (?:user|customer)|who does not exist|doesn'?t have a .{0,30}account|"
    r"invalid final delivery userid|no valid recipients|"
    r"not listed in (?:the )?(?:public name|domino directory)",
    r"host (?:or domain name )?not found|domain (?:not found|does not exist|doesn'?t exist)|"
    r"no (?:mx|mail exchanger)|null mx|doesn'?t receive email|does not accept mail|"
    r"couldn'?t find a mail exchanger|nxdomain|unknown (?:host|domain)|"
    r"domain name not found|host unknown|no such domain|invalid domain|"
    r"domain is not reachable|not listed in (?:the )?domino directory",
    r"utilisateur inconnu|destinataire inconnu|adresse (?:introuvable|inexistante)|"
    r"n'existe pas|unbekannt|existiert nicht|gibt es nicht|no existe|usuario desconocido|"
    r"inesistente|sconosciuto|neexistuje|neznamy|nie istnieje|nieznany|bestaat niet|"
    r"onbekend|nao existe|desconhecido|ne sushchestvuet|net takogo|neizvesten|"
    r"pol'?zovatel'? ne (?:naiden|najden)|bulunamadi|finns inte|adresat ne naiden|"
    r"pol'?zovatelia net|"
    r"postfach nicht gefunden|does not exist|doesn'?t exist|"
    # Japanese, as folding transliterates it: "not found in the (Domino) directory", "not in
    # the directory list", "address unknown", "does not exist"
    r"deirekutorinihajian tsukarimasen|deirekutorinorisutoniarimasen|wan xian bu ming|"
    r"cun zai shimasen",
)), re.IGNORECASE)
# Final whatever the rest says: a null MX, and Exchange Online's directory-based edge blocking
# ("550 5.4.1 Recipient address rejected: Access denied": no such mailbox in the tenant).
_FINAL = re.compile(r"null mx|doesn'?t receive email|does not accept mail|no mx|"
                    r"no mail exchanger|couldn'?t find a mail exchanger|"
                    r"not accepting network messages|indicated no smtp service|"
                    r"recipient address rejected: access denied")
_ADDRESS = re.compile(r"[^\s<>\"'(\[:;,]+@[a-z0-9-]+(?:\.[a-z0-9-]+)+")
_REPLY_CODE = re.compile(r"\b[45]\d\d\b")


def classify(status: str | None, diagnostic: str,
             default: str | None = SOFT) -> tuple[str | None, str | None]:
    """(kind, the reason in a few words) of one failed address. ``default``: the kind of a
    report that gives neither a status nor a reason (the seed's forms: hard; None: ask
    again with more text)."""
    # an address is no reason ("filtered@x", "mailboxfull@y" are mailboxes, not words)
    text = _ADDRESS.sub("<address>", fold(diagnostic or ""))
    ours = _OURS.search(text)
    if ours or (status and _SENDER_STATUS.match(status)):
        return SOFT, ours.group(0) if ours else f"status {status}"
    if status and _SOFT_STATUS.match(status):
        return SOFT, f"status {status}"
    final = _FINAL.search(text)
    if final:
        return HARD, final.group(0)
    soft = _SOFT_WORDS.search(text)
    hard_words = _HARD_WORDS.search(text)
    # A reply states its reason first: what follows is advice or boilerplate.
    if soft and not (hard_words and hard_words.start() < soft.start()):
        return SOFT, soft.group(0)
    if status and status.startswith("4."):
        return SOFT, f"temporary failure {status}"
    if status and HARD_STATUS.match(status):
        return HARD, f"status {status}"
    if hard_words:
        return HARD, hard_words.group(0)
    if default is None:
        return None, None           # undecided: the caller has more text to ask about
    if status is None and not _REPLY_CODE.search(text):
        return default, None
    return SOFT, f"status {status}" if status else "no known reason"
