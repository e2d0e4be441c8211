"""``[[boxes]]``: one technology mailbox and its settings (SPEC section 6)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sink.config.checks import (ConfigError, addresses, boolean, check_keys, domains, string,
                                strings)
from sink.config.rules import AdminRule, parse_rules
from sink.mail.textnorm import domain_of, fold_address
from sink.ruledata import LIST_NAMES, default_list


@dataclass(frozen=True)
class BoxConfig:
    address: str
    internal_domains: tuple[str, ...]
    ignore_subjects: tuple[str, ...] = ()
    system_senders: tuple[str, ...] = ()
    save_originals_from: tuple[str, ...] = ()
    incoming_as_pending: bool = False
    exception_addresses: tuple[str, ...] = ()
    exception_domains: tuple[str, ...] = ()
    block_free_mail: bool = False
    support_addresses: tuple[str, ...] = ()
    spam_senders: tuple[str, ...] = ()
    keywords: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # SPEC 2.3: when a carrier is trusted, and whether side effects need authentication
    journal_senders: tuple[str, ...] = ()
    pec: bool = False
    trusted_authserv_ids: tuple[str, ...] = ()
    authenticated_side_effects: bool = False
    owner: str = ""                                  # a user's address (SPEC 5 step 11)
    record_auto_replies: bool = False
    rules: tuple[AdminRule, ...] = ()                # [[boxes.rules]], compiled

    def rule_list(self, name: str) -> tuple[str, ...]:
        """A keyword/phrase list: the box's override, else the shipped default."""
        # a box's own list replaces the default, an empty one too (that rule then finds none)
        return self.keywords[name] if name in self.keywords else default_list(name)


_BOX_KEYS = {
    "address", "internal_domains", "ignore_subjects", "system_senders", "save_originals_from",
    "incoming_as_pending", "exception_addresses", "exception_domains", "block_free_mail",
    "support_addresses", "spam_senders", "keywords", "owner", "record_auto_replies", "rules",
    "journal_senders", "pec", "trusted_authserv_ids", "authenticated_side_effects",
}


def parse_box(where: str, raw: Any) -> BoxConfig:
    raw = check_keys(where, raw, _BOX_KEYS)
    if "address" not in raw:
        raise ConfigError(f"{where}.address: required")
    address = fold_address(string(f"{where}.address", raw["address"]))
    if "@" not in address:
        raise ConfigError(f"{where}.address: {address!r} is not an e-mail address")
    keywords: dict[str, tuple[str, ...]] = {}
    if "keywords" in raw:
        table = check_keys(f"{where}.keywords", raw["keywords"], set(LIST_NAMES))
        for name, value in table.items():
            keywords[name] = strings(f"{where}.keywords.{name}", value)
    internal = raw.get("internal_domains")
    return BoxConfig(
        address=address,
        internal_domains=domains(f"{where}.internal_domains", internal)
        if internal is not None else (domain_of(address),),
        ignore_subjects=strings(f"{where}.ignore_subjects", raw.get("ignore_subjects", [])),
        system_senders=addresses(f"{where}.system_senders", raw.get("system_senders", [])),
        save_originals_from=addresses(
            f"{where}.save_originals_from", raw.get("save_originals_from", [])),
        incoming_as_pending=boolean(
            f"{where}.incoming_as_pending", raw.get("incoming_as_pending", False)),
        exception_addresses=addresses(
            f"{where}.exception_addresses", raw.get("exception_addresses", [])),
        exception_domains=domains(f"{where}.exception_domains", raw.get("exception_domains", [])),
        block_free_mail=boolean(f"{where}.block_free_mail", raw.get("block_free_mail", False)),
        support_addresses=addresses(
            f"{where}.support_addresses", raw.get("support_addresses", [])),
        spam_senders=addresses(f"{where}.spam_senders", raw.get("spam_senders", [])),
        keywords=keywords,
        journal_senders=addresses(f"{where}.journal_senders", raw.get("journal_senders", [])),
        pec=boolean(f"{where}.pec", raw.get("pec", False)),
        trusted_authserv_ids=tuple(v.lower() for v in strings(
            f"{where}.trusted_authserv_ids", raw.get("trusted_authserv_ids", []))),
        authenticated_side_effects=boolean(
            f"{where}.authenticated_side_effects", raw.get("authenticated_side_effects", False)),
        owner=_owner(where, raw.get("owner", "")),
        record_auto_replies=boolean(
            f"{where}.record_auto_replies", raw.get("record_auto_replies", False)),
        rules=parse_rules(f"{where}.rules", raw.get("rules", [])),
    )


def _owner(where: str, value: Any) -> str:
    if value == "":
        return ""
    owner = fold_address(string(f"{where}.owner", value))
    if "@" not in owner:
        raise ConfigError(f"{where}.owner: {owner!r} is not an e-mail address")
    return owner
