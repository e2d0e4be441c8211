"""Directory rows <-> the in-memory :class:`sink.directory.Directory` snapshot, and the
idempotent ``sink directory import`` upsert (SPEC section 6)."""

from __future__ import annotations

import secrets
from collections import defaultdict

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from sink.db import schema as t
from sink.db.fastpath import Fast
from sink.directory import Company, Contact, Directory, Numbered, User
from sink.mail.textnorm import fold, fold_address


class DirectoryImportError(Exception):
    """The import file is not in the documented format; the message says where."""


def directory_version(conn: Connection) -> int:
    return conn.execute(select(t.directory_meta.c.version).where(
        t.directory_meta.c.id == 1)).scalar() or 0


_VERSION = Fast(select(t.directory_meta.c.version).where(t.directory_meta.c.id == 1))


def current_version(conn: Connection) -> int:
    """:func:`directory_version` on the DBAPI cursor (sink.db.fastpath), for the check every
    batch makes twice (deciding ahead, then writing): through ``Connection.execute`` it cost
    ~0.3 ms, a quarter of a one-message batch. Inside the caller's transaction when there is
    one; outside one (a connection only reading) it reads the latest committed version."""
    row = _VERSION.first(conn, {})
    return (row[0] if row else None) or 0


def bump_version(conn: Connection) -> None:
    """Mark the directory changed. The version is a fresh random token, not a counter: a
    transaction that bumped it and then rolled back may have cached a snapshot under its value,
    and a counter would hand that same value to the next change."""
    current = directory_version(conn)
    token = current
    while token == current:
        token = secrets.randbelow(2**31 - 2) + 1
    if conn.execute(update(t.directory_meta).where(t.directory_meta.c.id == 1).values(
            version=token)).rowcount == 0:
        conn.execute(insert(t.directory_meta).values(id=1, version=token))


def load_directory(conn: Connection) -> Directory:
    d = Directory(version=directory_version(conn))
    role_of = {r.id: r for r in conn.execute(select(t.roles))}
    by_id = {}
    for row in conn.execute(select(t.users)):
        role = role_of.get(row.role_id)
        user = User(row.id, row.email, row.name, role.name if role else None,
                    role.level if role else None)
        by_id[row.id] = user
        d.users[row.email] = user
    for row in conn.execute(select(t.user_aliases)):
        if row.user_id in by_id:
            d.users.setdefault(row.address, by_id[row.user_id])
    company_by_id = {r.id: Company(r.id, r.name) for r in conn.execute(select(t.companies))}
    d.companies = {c.name: c for c in company_by_id.values()}
    by_address, by_domain = defaultdict(list), defaultdict(list)
    for row in conn.execute(select(t.company_emails)):
        by_address[row.address].append(company_by_id[row.company_id])
    for row in conn.execute(select(t.company_domains)):
        by_domain[row.domain].append(company_by_id[row.company_id])
    d.companies_by_address = {k: tuple(v) for k, v in by_address.items()}
    d.companies_by_domain = {k: tuple(v) for k, v in by_domain.items()}
    contacts = defaultdict(list)
    for row in conn.execute(select(t.contacts)):
        company = company_by_id.get(row.company_id)
        contacts[row.email].append(Contact(row.id, row.email, row.name,
                                           company.name if company else None))
    d.contacts = {k: tuple(v) for k, v in contacts.items()}
    for table, target, column in ((t.contracts, d.contracts, "number"),
                                  (t.orders, d.orders, "number"),
                                  (t.tasks, d.tasks, "number"),
                                  (t.activity_types, d.activity_types, "name")):
        for row in conn.execute(select(table.c.id, table.c[column])):
            target[fold(row[1])] = Numbered(row[0], row[1])
    return d


# ---------------------------------------------------------------------------------- import

def _items(data: dict, key: str) -> list:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise DirectoryImportError(f"{key}: expected a list")
    return value


def _field(where: str, item: dict, key: str, kind=str, required=False, default=None):
    if key not in item:
        if required:
            raise DirectoryImportError(f"{where}.{key}: required")
        return default
    value = item[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise DirectoryImportError(f"{where}.{key}: expected {kind.__name__}")
    return value


def _upsert(conn: Connection, table, key_col: str, key, values: dict) -> int:
    row = conn.execute(select(table.c.id).where(table.c[key_col] == key)).first()
    if row:
        if values:
            conn.execute(update(table).where(table.c.id == row.id).values(**values))
        return row.id
    return conn.execute(insert(table).values({key_col: key, **values})).inserted_primary_key[0]


def _addresses(where: str, value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DirectoryImportError(f"{where}: expected a list of strings")
    return list(dict.fromkeys(fold_address(v) for v in value if v.strip()))


_SECTIONS = ("roles", "users", "companies", "contacts", "contracts", "orders", "tasks",
             "activity_types")


def import_directory(conn: Connection, data: dict) -> dict[str, int]:
    """Upsert everything in ``data`` (by e-mail, number or name); return counts per kind."""
    if not isinstance(data, dict):
        raise DirectoryImportError("expected a JSON object")
    for key in data:
        if key not in _SECTIONS:
            raise DirectoryImportError(f"{key}: unknown section")
    role_ids = _import_roles(conn, _items(data, "roles"))
    _import_users(conn, _items(data, "users"), role_ids)
    company_ids = _import_companies(conn, _items(data, "companies"))
    _import_contacts(conn, _items(data, "contacts"), company_ids)
    for section, table, text_col in (("contracts", t.contracts, "name"),
                                     ("orders", t.orders, "name"),
                                     ("tasks", t.tasks, "subject")):
        _import_numbered(conn, section, _items(data, section), table, text_col)
    _import_activity_types(conn, _items(data, "activity_types"))
    bump_version(conn)
    return {section: len(_items(data, section)) for section in _SECTIONS}


def _person(w: str, item: dict, link: str, ids: dict[str, int], column: str) -> tuple[str, dict]:
    """A user's or contact's e-mail and values: name, and its role / company by name."""
    email = fold_address(_field(w, item, "email", required=True))
    values = {"name": _field(w, item, "name", default="")}
    name = _field(w, item, link)
    if name is not None:
        if name not in ids:
            raise DirectoryImportError(f"{w}.{link}: unknown {link} {name!r}")
        values[column] = ids[name]
    return email, values


def _import_roles(conn: Connection, items: list) -> dict[str, int]:
    role_ids = {r.name: r.id for r in conn.execute(select(t.roles))}
    for i, item in enumerate(items):
        w = f"roles[{i}]"
        name = _field(w, item, "name", required=True)
        role_ids[name] = _upsert(conn, t.roles, "name", name,
                                 {"level": _field(w, item, "level", int, required=True)})
    return role_ids


def _import_users(conn: Connection, items: list, role_ids: dict[str, int]) -> None:
    for i, item in enumerate(items):
        w = f"users[{i}]"
        email, values = _person(w, item, "role", role_ids, "role_id")
        user_id = _upsert(conn, t.users, "email", email, values)
        if "aliases" in item:
            conn.execute(delete(t.user_aliases).where(t.user_aliases.c.user_id == user_id))
            for alias in _addresses(f"{w}.aliases", item["aliases"]):
                if alias != email:
                    conn.execute(delete(t.user_aliases).where(t.user_aliases.c.address == alias))
                    conn.execute(insert(t.user_aliases).values(address=alias, user_id=user_id))


def _import_companies(conn: Connection, items: list) -> dict[str, int]:
    company_ids = {r.name: r.id for r in conn.execute(select(t.companies.c.id, t.companies.c.name))}
    for i, item in enumerate(items):
        w = f"companies[{i}]"
        name = _field(w, item, "name", required=True)
        company_id = company_ids[name] = _upsert(conn, t.companies, "name", name, {})
        for key, table, col, fix in (("emails", t.company_emails, "address", fold_address),
                                     ("domains", t.company_domains, "domain",
                                      lambda d: d.strip().lower().lstrip("@"))):
            if key in item:
                conn.execute(delete(table).where(table.c.company_id == company_id))
                values = _addresses(f"{w}.{key}", item[key]) if key == "emails" else [
                    fix(v) for v in _addresses(f"{w}.{key}", item[key])]
                for value in dict.fromkeys(values):
                    conn.execute(insert(table).values(company_id=company_id, **{col: value}))
    return company_ids


def _import_contacts(conn: Connection, items: list, company_ids: dict[str, int]) -> None:
    for i, item in enumerate(items):
        w = f"contacts[{i}]"
        email, values = _person(w, item, "company", company_ids, "company_id")
        for flag in ("allow_emails", "allow_bulk_emails", "non_functional"):
            if flag in item:
                values[flag] = _field(w, item, flag, bool)
        _upsert(conn, t.contacts, "email", email, values)


def _import_numbered(conn: Connection, section: str, items: list, table, text_col: str) -> None:
    for i, item in enumerate(items):
        w = f"{section}[{i}]"
        number = _field(w, item, "number", required=True)
        values = {}
        if text_col in item:
            values[text_col] = _field(w, item, text_col)
        if section == "contracts" and "kind" in item:
            kind = _field(w, item, "kind")
            if kind not in ("contract", "project"):
                raise DirectoryImportError(f"{w}.kind: expected \"contract\" or \"project\"")
            values["kind"] = kind
        _upsert(conn, table, "number", number, values)


def _import_activity_types(conn: Connection, types: list) -> None:
    existing = {fold(r.name) for r in conn.execute(select(t.activity_types.c.name))}
    for i, name in enumerate(["E-mail", *types]):
        if not isinstance(name, str) or not name.strip():
            raise DirectoryImportError(f"activity_types[{i - 1}]: expected a name")
        if fold(name) not in existing:
            conn.execute(insert(t.activity_types).values(name=name.strip()))
            existing.add(fold(name))
