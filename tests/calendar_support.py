"""The calendar tests' harness: the fake Microsoft (tests/graph_fake.py) with a tenant that
mirrors the test directory, a ``[calendar]`` config pointing at it, and row helpers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import insert, select, update

from sink.calendar.service import make_syncer
from sink.config import parse_config
from sink.db import schema as t

A = t.calendar_activities


def hour(days: float, at: int = 9) -> datetime:
    """``days`` from today at ``at`` o'clock UTC: inside the default sync window."""
    today = datetime.now(timezone.utc).replace(hour=at, minute=0, second=0, microsecond=0)
    return today + timedelta(days=days)


class Harness:
    def __init__(self, fake, engine, tmp_path: Path, db_url: str):
        self.fake, self.tenant, self.engine = fake, fake.tenant, engine
        self.secret_file = tmp_path / "graph.secret"
        self.secret_file.write_text(self.tenant.secret + "\n")
        # Alice is known to the tenant by her alias only: matching must try aliases.
        self.alice = self.tenant.add_user("alice.novak@firma-group.com")
        self.bob = self.tenant.add_user("bob@firma.cz")
        self.carol = self.tenant.add_user("carol@firma.cz", mailbox=False)
        # dave@firma.cz is not in the tenant at all.
        self.calendar_table = {
            "tenant_id": self.tenant.tenant_id, "client_id": self.tenant.client_id,
            "client_secret_file": str(self.secret_file), "interval": 60,
            "authority": fake.authority, "graph_url": fake.graph_url,
            "ca_file": str(fake.ca_file)}
        self.config = parse_config({"database": {"url": db_url}, "log": {"level": "warning"},
                                    "boxes": [{"address": "crm@firma.cz"}],
                                    "calendar": self.calendar_table})
        self.sleeps: list[float] = []
        self.syncer = make_syncer(self.config.calendar, engine, sleep=self.sleeps.append)

    def write_config(self, path: Path) -> Path:
        lines = [f'[database]\nurl = "{self.config.database_url}"\n', "[log]\nlevel = \"warning\"\n",
                 "[[boxes]]\naddress = \"crm@firma.cz\"\n", "[calendar]"]
        for key, value in self.calendar_table.items():
            lines.append(f"{key} = {value}" if isinstance(value, int) else f'{key} = "{value}"')
        path.write_text("\n".join(lines) + "\n")
        return path

    def run(self, user: str | None = None) -> dict:
        return {r.user: r for r in self.syncer.run(user)}

    def close(self) -> None:
        self.syncer.graph.close()

    # ------------------------------------------------------------------------------- rows
    def user_id(self, email: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(t.users.c.id).where(t.users.c.email == email)).scalar()

    def rows(self, email: str | None = None) -> list:
        query = select(A).order_by(A.c.start, A.c.id)
        if email:
            query = query.where(A.c.user_id == self.user_id(email))
        with self.engine.connect() as conn:
            return conn.execute(query).all()

    def row(self, graph_id: str):
        with self.engine.connect() as conn:
            return conn.execute(select(A).where(A.c.graph_id == graph_id)).first()

    def crm_edit(self, activity_id: int, modified: datetime | None = None, **values) -> None:
        """An edit the CRM side makes: the fields, and when (crm_modified_at)."""
        with self.engine.begin() as conn:
            conn.execute(update(A).where(A.c.id == activity_id).values(
                crm_modified_at=modified or datetime.now(timezone.utc), **values))

    def crm_create(self, email: str, subject: str, start: datetime, **values) -> int:
        user_id = self.user_id(email)
        with self.engine.begin() as conn:
            return conn.execute(insert(A).values(
                user_id=user_id, outlook=True, crm_deleted=False,
                type_name="Meeting", subject=subject, location=values.pop("location", ""),
                start=start, end=start + timedelta(hours=1), all_day=False,
                attendees=values.pop("attendees", []),
                event_type=values.pop("event_type", "singleInstance"),
                cancelled=False, crm_modified_at=datetime.now(timezone.utc), **values)
            ).inserted_primary_key[0]

    def trace(self, action: str | None = None) -> list:
        c = t.calendar_trace.c
        query = select(t.calendar_trace).order_by(c.id)
        if action:
            query = query.where(c.action == action)
        with self.engine.connect() as conn:
            return conn.execute(query).all()

    def graph_calls(self, method: str) -> list[str]:
        return [p for m, p in self.fake.requests if m == method and p.startswith("/v1.0/")]
