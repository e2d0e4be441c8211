"""``[[boxes.rules]]``: a box's admin rules (SPEC 5 "Admin rules", seed 002's Mail Converter),
checked and compiled once, when the config is loaded, into plain data the pure core evaluates
(:mod:`sink.pipeline.admin`).

Regexes are compiled with the third-party ``regex`` module: Python syntax like ``re``, but its
matching can be given a timeout, which is what bounds catastrophic backtracking - no check at
config time can tell ``(a+)+$`` apart from a harmless pattern in general. Input is bounded too:
every field is cut to its first :data:`MAX_TEXT` characters before any condition sees it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import regex

from sink.config.checks import ConfigError, check_keys, string
from sink.mail.textnorm import fold

FIELDS = ("from", "to", "subject", "body")
OPS = ("contains", "not_contains", "equals", "starts_with", "ends_with", "regex")
ACTIONS = ("create_ticket", "update_ticket", "link_from", "link_to", "do_nothing", "mark_spam")
MATCHES = ("all", "any")
MAX_TEXT = 100_000               # characters of a field a condition reads
MAX_RULES = 200                  # per box: rules are evaluated for every message
MAX_NAME = 100                   # "admin:NAME" is stored with every ticket it makes
_KEBAB = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: str                   # as written (a regex: the pattern)
    folded: str = ""             # the value folded (case and diacritics), for the text ops
    pattern: Any = None          # the compiled regex (op "regex")


@dataclass(frozen=True)
class AdminRule:
    name: str
    match: str                   # "all" | "any"
    conditions: tuple[Condition, ...]
    action: str

    @property
    def trace_name(self) -> str:
        return f"admin:{self.name}"

    def number_condition(self) -> Condition | None:
        """``update_ticket``: the rule's first regex condition, whose first group is the
        ticket number (seed 002 "regex in first position")."""
        return next((c for c in self.conditions if c.op == "regex"), None)


def parse_rules(where: str, raw: Any) -> tuple[AdminRule, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected [[boxes.rules]] tables")
    if len(raw) > MAX_RULES:
        raise ConfigError(f"{where}: at most {MAX_RULES} rules per box")
    rules: list[AdminRule] = []
    for i, table in enumerate(raw):
        rule = _parse_rule(f"{where}[{i}]", table)
        if any(r.name == rule.name for r in rules):
            raise ConfigError(f"{where}[{i}].name: rule {rule.name!r} is defined twice")
        rules.append(rule)
    return tuple(rules)


def _parse_rule(where: str, table: Any) -> AdminRule:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    name = string(f"{where}.name", table.get("name", ""))
    if not _KEBAB.fullmatch(name) or len(name) > MAX_NAME:
        raise ConfigError(f"{where}.name: {name!r} is not kebab-case (like ticket-replies) of at most "
                          f"{MAX_NAME} characters")
    where = f"{where} (rule {name})"
    check_keys(where, table, {"name", "match", "conditions", "action"})
    match = table.get("match", "all")
    if match not in MATCHES:
        raise ConfigError(f"{where}.match: expected \"all\" or \"any\", got {match!r}")
    action = table.get("action")
    if action not in ACTIONS:
        raise ConfigError(f"{where}.action: unknown action {action!r}; expected one of "
                          f"{', '.join(ACTIONS)}")
    conditions = table.get("conditions")
    if not isinstance(conditions, list) or not conditions:
        raise ConfigError(f"{where}.conditions: expected a non-empty list of conditions")
    parsed = tuple(_parse_condition(f"{where}.conditions[{i}]", c)
                   for i, c in enumerate(conditions))
    rule = AdminRule(name, match, parsed, action)
    if action == "update_ticket":
        first = rule.number_condition()
        if first is None or first.pattern.groups < 1:
            raise ConfigError(f"{where}: update_ticket needs a regex condition with a group "
                              f"that captures the ticket number")
    return rule


def _parse_condition(where: str, raw: Any) -> Condition:
    raw = check_keys(where, raw, {"field", "op", "value"})
    field = raw.get("field")
    if field not in FIELDS:
        raise ConfigError(f"{where}.field: unknown field {field!r}; expected one of "
                          f"{', '.join(FIELDS)}")
    op = raw.get("op")
    if op not in OPS:
        raise ConfigError(f"{where}.op: unknown op {op!r}; expected one of {', '.join(OPS)}")
    value = raw.get("value")
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.value: expected a non-empty string")
    if op != "regex":
        return Condition(field, op, value, folded=fold(value))
    try:
        pattern = regex.compile(value, regex.IGNORECASE | regex.VERSION0)
    except (regex.error, ValueError, OverflowError, RecursionError) as exc:
        raise ConfigError(f"{where}.value: bad regex {value!r}: {exc}") from None
    return Condition(field, op, value, pattern=pattern)
