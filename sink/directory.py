"""An in-memory, read-only snapshot of the directory: who is who (SPEC section 4).

Pure data: the rules read it, the executor takes database ids from it. It is built by
``sink.db.directory_store.load_directory`` and replaced whenever the directory changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sink.mail.textnorm import fold


@dataclass(frozen=True)
class User:
    id: int
    email: str
    name: str
    role: str | None
    level: int | None


@dataclass(frozen=True)
class Contact:
    id: int
    email: str
    name: str
    company: str | None


@dataclass(frozen=True)
class Company:
    id: int
    name: str


@dataclass(frozen=True)
class Numbered:
    """A contract, order or task: looked up by its number, ignoring case and diacritics."""
    id: int
    number: str


@dataclass
class Directory:
    users: dict[str, User] = field(default_factory=dict)                    # email and aliases
    contacts: dict[str, tuple[Contact, ...]] = field(default_factory=dict)  # by email
    companies: dict[str, Company] = field(default_factory=dict)             # by name
    companies_by_address: dict[str, tuple[Company, ...]] = field(default_factory=dict)
    companies_by_domain: dict[str, tuple[Company, ...]] = field(default_factory=dict)
    contracts: dict[str, Numbered] = field(default_factory=dict)            # by fold(number)
    orders: dict[str, Numbered] = field(default_factory=dict)
    tasks: dict[str, Numbered] = field(default_factory=dict)
    activity_types: dict[str, Numbered] = field(default_factory=dict)      # by fold(name)
    version: int = 0

    @property
    def type_max_words(self) -> int:
        return max((len(k.split()) for k in self.activity_types), default=1)

    def user(self, address: str) -> User | None:
        return self.users.get(address)

    def activity_type(self, name: str) -> Numbered | None:
        return self.activity_types.get(fold(name))
