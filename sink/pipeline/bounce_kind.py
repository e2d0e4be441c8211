"""Hard or soft (SPEC 5 step 8): only "the mailbox or domain does not exist" is hard.

Hard: enhanced status 5.1.x about the recipient (5.1.0-5.1.6, 5.1.10: bad mailbox, bad
domain, moved, null MX), 5.2.1 (mailbox disabled), or those words in the diagnostic text, in
several languages. Soft: everything else - every 4.x.x, a full mailbox, a message too big,
greylisting, timeouts, spam and policy refusals, and above all refusals that are our own
server's fault (its IP on a blacklist, no reverse DNS, SPF/DKIM/DMARC, rate limits): a
blacklisting of the company's outbound IP must never mark healthy addresses dead.

The order matters: words that put the blame on the sender, the content or a policy win over
a status code (servers say "550 5.1.1" for a Spamhaus listing), then a 4.x.x status is soft
(unless the domain has a null MX: that is final whatever code a report chose), then the status,
then the words. A report with neither a status nor a reason counts as hard (seed 000).
"""

from __future__ import annotations

import re

from sink.mail.textnorm import fold

HARD, SOFT = "hard", "soft"
HARD_STATUS = re.compile(r"^5\.1\.(?:[0-6]|10)$|^5\.2\.1$")

# The sender's, the content's or a policy's fault, or temporary: never hard.
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
    r"too busy|throttl|resources",
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
    r"(?:account|mailbox) (?:has been |is )?(?:disabled|deactivated|closed|inactive)|"
    r"couldn'?t be found|could not be found|address couldn'?t be found|not listed in|"
    r"not our (?:user|customer)|who does not exist|doesn'?t have a .{0,30}account",
    r"host (?:or domain name )?not found|domain (?:not found|does not exist|doesn'?t exist)|"
    r"no (?:mx|mail exchanger)|null mx|doesn'?t receive email|does not accept mail|"
    r"couldn'?t find a mail exchanger|name service error|nxdomain|unknown (?:host|domain)|"
    r"domain name not found|host unknown|no such domain|not accept(?:ing)? (?:network )?mail",
    r"utilisateur inconnu|destinataire inconnu|adresse (?:introuvable|inexistante)|"
    r"n'existe pas|unbekannt|existiert nicht|gibt es nicht|no existe|usuario desconocido|"
    r"inesistente|sconosciuto|neexistuje|neznamy|nie istnieje|nieznany|bestaat niet|"
    r"onbekend|nao existe|desconhecido|ne sushchestvuet|net takogo|neizvesten|"
    r"polzovatel ne najden|bulunamadi|finns inte",
)), re.IGNORECASE)
_NULL_MX = re.compile(r"null mx|doesn'?t receive email|does not accept mail|no mx|"
                      r"no mail exchanger|couldn'?t find a mail exchanger|"
                      r"not accept(?:ing)? (?:network )?mail|indicated no smtp service")
_REPLY_CODE = re.compile(r"\b[45]\d\d\b")


def classify(status: str | None, diagnostic: str) -> tuple[str, str | None]:
    """(kind, the reason in a few words) of one failed address."""
    text = fold(diagnostic or "")
    if _NULL_MX.search(text):
        return HARD, "the domain accepts no mail"
    soft = _SOFT_WORDS.search(text)
    hard_words = _HARD_WORDS.search(text)
    if soft and not (hard_words and status and HARD_STATUS.match(status)):
        return SOFT, soft.group(0)
    if status and status.startswith("4."):
        return SOFT, f"temporary failure {status}"
    if status and HARD_STATUS.match(status):
        return HARD, f"status {status}"
    if hard_words:
        return HARD, hard_words.group(0)
    if status is None and not _REPLY_CODE.search(text):
        return HARD, None          # neither status nor reason: the seed's heuristics say dead
    return SOFT, f"status {status}" if status else "no known reason"
