"""What every rule may read about one message in one box, computed once and cached."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterable

from sink.config import BoxConfig
from sink.directory import Directory, User
from sink.mail.parse import ParsedMessage
from sink.pipeline.records import MemoryRecords, Records
from sink.mail.textnorm import domain_of, fold

Seen = Callable[[Iterable[tuple[str, str]]], bool]


def dedup_keys(msg: ParsedMessage) -> tuple[tuple[str, str], ...]:
    """Seed 000 15.1: date, sender, all recipients (a set) and subject; and the Message-ID."""
    recipients = ",".join(sorted(set(msg.to + msg.cc)))
    material = "\x00".join((msg.date_header, msg.sender or "", recipients, msg.subject))
    keys = [("key", hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest())]
    if msg.message_id:
        keys.append(("message-id", hashlib.sha256(
            msg.message_id.encode("utf-8", "surrogatepass")).hexdigest()))
    return tuple(keys)


@dataclass
class Context:
    msg: ParsedMessage
    box: BoxConfig
    directory: Directory
    seen: Seen
    direction: str | None = None
    facts: dict = field(default_factory=dict)
    records: Records = field(default_factory=MemoryRecords)

    # -- addresses ---------------------------------------------------------------------------
    @cached_property
    def sender(self) -> str:
        return self.msg.sender or ""

    @cached_property
    def recipients(self) -> tuple[str, ...]:
        return self.msg.recipients

    @cached_property
    def internal_domains(self) -> frozenset[str]:
        return frozenset(self.box.internal_domains)

    def is_internal(self, address: str) -> bool:
        return domain_of(address) in self.internal_domains

    def user(self, address: str) -> User | None:
        return self.directory.user(address)

    @cached_property
    def free_mail(self) -> frozenset[str]:
        return frozenset(d.lower() for d in self.box.rule_list("free_mail_domains"))

    def is_exception_domain(self, address: str) -> bool:
        domain = domain_of(address)
        return domain in self.box.exception_domains or (
            self.box.block_free_mail and domain in self.free_mail)

    def is_ours(self, address: str) -> bool:
        """The box, an internal address or a user's (an alias may be in another domain)."""
        return (address == self.box.address or self.is_internal(address)
                or self.user(address) is not None)

    @cached_property
    def recipient_users(self) -> tuple[User, ...]:
        """Users among the recipients, once each, in recipient order (the box is no user)."""
        users: dict[int, User] = {}
        for address in self.recipients:
            user = self.user(address)
            if user is not None and address != self.box.address:
                users.setdefault(user.id, user)
        return tuple(users.values())

    @cached_property
    def counterparts(self) -> tuple[str, ...]:
        """Sender and recipients that are neither internal, nor users, nor the box."""
        out = []
        for address in (self.sender, *self.recipients):
            if (address and address != self.box.address and not self.is_internal(address)
                    and self.user(address) is None):
                out.append(address)
        return tuple(dict.fromkeys(out))

    # -- text --------------------------------------------------------------------------------
    @cached_property
    def subject(self) -> str:
        return fold(self.msg.subject)

    @cached_property
    def body(self) -> str:
        return fold(self.msg.body_text)

    def folded_list(self, name: str) -> tuple[str, ...]:
        return tuple(f for f in (fold(v) for v in self.box.rule_list(name)) if f)
