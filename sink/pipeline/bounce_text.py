"""The words of plain-text bounces: how each dialect is recognised, and where the returned
original starts. Subjects and phrases are compared folded (lower case, no diacritics:
:func:`sink.mail.textnorm.fold`), so "Nedoručitelné" is written "nedorucitelne" here."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class BounceForm:
    """A plain-text bounce: the subject contains one of ``subject``, and for every group in
    ``body`` the body contains one of its phrases."""
    name: str
    subject: tuple[str, ...]
    body: tuple[tuple[str, ...], ...]


# Recognised from anyone (the seed's forms and two whose wording is unmistakable).
FORMS = (
    # Seed 000 ch. 13, as written.
    BounceForm("undeliverable-mail", ("undeliverable mail",),
               (("the following mail failed to be delivered",), ("to:",))),
    # Seed 000 ch. 13, and Postfix's bounce ("... your message could not\nbe delivered to one
    # or more recipients"; folding joins the line break).
    BounceForm("undelivered-mail", ("undelivered mail",),
               (("message could not",), ("be delivered to one or more recipients",))),
    # Exchange and Outlook.com non-delivery reports ("Undeliverable: <subject>").
    BounceForm("exchange", ("undeliverable:",),
               (("delivery has failed to these recipients or groups", "couldn't be delivered",
                 "could not be delivered", "wasn't delivered"),)),
    # Gmail ("Delivery Status Notification (Failure)").
    BounceForm("gmail", ("delivery status notification (failure)",),
               (("wasn't delivered to", "delivery to the following recipient failed permanently",
                 "delivery to the following recipients failed permanently",
                 "message could not be delivered", "couldn't be delivered"),)),
    # Exim (Debian's default, cPanel, GMX, mail.ru): "Mail delivery failed: returning message
    # to sender".
    BounceForm("exim", ("mail delivery failed",),
               (("could not be delivered to one or more of its recipients",
                 "permanent error", "delivery failed", "not be delivered"),)),
    # qmail and its descendants: "failure notice".
    BounceForm("qmail", ("failure notice",),
               (("unable to deliver your message", "this is a permanent error",
                 "i'm afraid i wasn't able to deliver"),)),
)

# Subjects of delivery reports of the other dialects (and of the ones above, translated).
SUBJECTS = (
    "undeliver", "undelivered", "non-deliver", "nondeliver", "not delivered",
    "delivery status notification", "delivery notification", "delivery failure",
    "delivery failed", "failed delivery", "mail failed", "returning to sender",
    "delivery problem", "delivery has failed",
    "returned mail", "returned to sender", "return to sender", "mail system error",
    "failure notice", "mail failure", "could not send message", "permanent error",
    "message you sent", "warning: could not", "error sending message", "mail error",
    "unzustellbar", "nicht zustellbar", "zustellung fehlgeschlagen", "non remis",
    "non distribue", "echec de la remise", "echec de distribution", "no entregado",
    "no se puede entregar", "error en la entrega", "non recapitabile", "mancata consegna",
    "nedorucitelne", "nedoruceno", "nedorucena", "nie dostarczono", "niedostarczona",
    "onbestelbaar", "kan niet worden bezorgd", "nao entregue", "falha na entrega",
    "ne dostavleno", "nedostavlen", "ne udalos dostavit", "vozvrat", "sistema dostavki",
    "kullanilamaz", "iletilemedi", "levering mislukt", "kunde inte levereras",
)

# What a notice says about a failed delivery (a system sender's mail needs one of these).
PHRASES = (
    "could not be delivered", "couldn't be delivered", "cannot be delivered",
    "can't be delivered", "wasn't delivered", "was not delivered", "not be delivered",
    "delivery has failed", "delivery to the following recipient", "failed permanently",
    "permanent error", "permanent fatal error", "unable to deliver", "undeliverable",
    "undelivered", "delivery failed", "returned to sender", "user unknown", "unknown user",
    "no such user", "does not exist", "delivery status notification", "mail delivery",
    "i'm sorry to have to inform you", "error occurred while trying to deliver",
    "not delivered", "unzustellbar", "konnte nicht zugestellt", "n'a pas pu etre remis",
    "non remis", "no pudo ser entregado", "non e stato possibile", "nepodarilo se dorucit",
    "nie moze zostac dostarczona", "ne mozhet byt dostavleno", "ne dostavleno",
    "could not deliver", "delivery to the following", "did not reach",
)

# Delay warnings: a delivery report that changes nothing.
DELAY_SUBJECTS = ("(delay)", "delayed mail", "delivery delayed", "warning: message",
                  "still being retried", "delivery status notification (delay)",
                  "verzogerte", "retarde")

# Where a plain-text bounce starts quoting the returned message (or its machine-readable
# report): addresses after it are the original's, not the failed recipients.
ORIGINAL_STARTS = re.compile(
    r"^\s*(?:-+\s*original message\s*-+|original message headers|"
    r"-+\s*(?:below this line is a copy of the message|this is a copy of the message).*|"
    r"-+\s*(?:the )?original message (?:follows|is attached|headers).*|"
    r"-+\s*(?:returned|unsent) message.*|"
    r"diagnostic information for administrators|reporting-mta\s*:|return-path\s*:|"
    r"received\s*:\s*from|message-id\s*:)",
    re.IGNORECASE | re.MULTILINE)


def dialect(subject: str, body: str, system_sender: bool) -> str | None:
    """The name of the plain-text bounce form of a message (folded subject and body), "delay"
    for a delay warning, None when it is no bounce."""
    for form in FORMS:
        if any(p in subject for p in form.subject) and all(
                any(p in body for p in group) for group in form.body):
            return form.name
    titled = any(p in subject for p in SUBJECTS)
    if not titled and not system_sender:
        return None
    if any(p in subject for p in DELAY_SUBJECTS):
        return "delay"
    worded = any(p in body for p in PHRASES)
    if system_sender and (titled or worded):
        return "plain"
    return "subject" if worded else None
