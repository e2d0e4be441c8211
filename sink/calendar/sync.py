"""One synchronisation pass: for each user, Outlook -> CRM by delta, then CRM -> Outlook.

Per user, under the user's database lock (:func:`sink.calendar.store.user_lock`):

1. pull: the delta round of the user's calendarView window, one transaction per page; the
   deltaLink is stored with the last page, so a pass killed anywhere repeats the round from the
   previous link and the upserts (by Graph id) make the repetition harmless. 410 -> the link
   is dropped and a full round runs; rows the full round did not see were deleted in Outlook.
2. series: each master an instance of this round points to is fetched (recurrence); a master
   Graph no longer has takes its instances with it.
3. push: rows marked for the calendar whose fields differ from what both sides last agreed
   (``synced_hash``) are created (with our ``transactionId``, so a retried POST is not a second
   event), updated or deleted in Outlook, and the answered change key is stored: the delta
   round that brings our own edit back finds the same change key and skips it.

A conflict (edited on both sides since the last agreement) goes to the later change: Graph's
``lastModifiedDateTime`` against the CRM's ``crm_modified_at``; the trace records which won.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import timedelta

from sqlalchemy import delete, insert, update

from sink.calendar import store
from sink.calendar.events import cancelled_occurrences, digest, from_graph, to_graph, utc
from sink.calendar.graph import GraphClient, GraphError, MailboxUnavailable, SyncStateGone
from sink.calendar.token import TokenError
from sink.config.calendar import CalendarConfig
from sink.db import schema as t
from sink.log import get_logger

log = get_logger("sink.calendar.sync")
A = t.calendar_activities
REFUSALS = {400, 403, 409, 422}     # Graph refuses the activity itself: not worth a retry


class NotInTenant(Exception):
    """No user of the tenant has this user's e-mail or an alias of it."""

    code = "not-in-tenant"


class Stopped(Exception):
    """The service is stopping: the pass ends between two pages, nothing half-written."""


@dataclass
class UserReport:
    user: str
    # ok | busy | not-in-tenant | no-mailbox | failed | token-refused | skipped
    status: str = "ok"
    full_sync: bool = False
    pulled: dict = field(default_factory=lambda: dict.fromkeys(
        ("created", "updated", "deleted", "cancelled", "unchanged"), 0))
    pushed: dict = field(default_factory=lambda: dict.fromkeys(
        ("created", "updated", "deleted"), 0))
    conflicts: int = 0
    error: str | None = None

    def as_json(self) -> dict:
        return asdict(self)


@dataclass
class _Round:
    user: dict
    report: UserReport
    full: bool
    seen: set = field(default_factory=set)
    masters: set = field(default_factory=set)
    type_id: int | None = None          # of the configured activity type, looked up once


class CalendarSyncer:
    def __init__(self, config: CalendarConfig, engine, graph: GraphClient):
        self.config, self.engine, self.graph = config, engine, graph

    def run(self, only: str | None = None, should_stop=lambda: False) -> list[UserReport]:
        with self.engine.connect() as conn:
            users = store.users(conn, only)
        reports: list[UserReport] = []
        for i, user in enumerate(users):
            if should_stop():
                break
            try:
                reports.append(self.sync_user(user, should_stop))
            except TokenError as exc:
                # Every user needs the same token: stop here rather than ask once per user.
                reports.append(UserReport(user["email"],
                                          "token-refused" if exc.refused else "failed",
                                          error=str(exc)))
                reports += [UserReport(u["email"], "skipped", error="no token")
                            for u in users[i + 1:]]
                break
            except Stopped:
                break
        return reports

    def sync_user(self, user: dict, should_stop=lambda: False) -> UserReport:
        report = UserReport(user["email"])
        with store.user_lock(self.engine, user["id"]) as mine:
            if not mine:
                report.status = "busy"      # another instance is in this user's pass
                return report
            try:
                self._sync_locked(user, report, should_stop)
            except (TokenError, Stopped):
                raise
            except NotInTenant as exc:
                self._failed(user, report, "not-in-tenant", exc)
            except MailboxUnavailable as exc:
                self._failed(user, report, "no-mailbox", exc)
            except GraphError as exc:
                if exc.status == 404 and exc.code == "ResourceNotFound":
                    self._forget_graph_user(user)   # the user was re-created: look up again
                self._failed(user, report, "failed", exc)
            except Exception as exc:        # one user's bad data never stops the others
                log.exception("calendar.user_crashed", user=user["email"])
                self._failed(user, report, "failed", exc)
        return report

    def _forget_graph_user(self, user: dict) -> None:
        with self.engine.begin() as conn:
            store.save_state(conn, user["id"], graph_user_id=None, delta_link=None)

    def _failed(self, user: dict, report: UserReport, status: str, exc: Exception) -> None:
        report.status, report.error = status, str(exc)[:500]
        kind = f"{status}:{getattr(exc, 'code', type(exc).__name__)}"
        with self.engine.begin() as conn:
            before = store.state(conn, user["id"]).error_kind
            store.save_state(conn, user["id"], last_error=report.error, error_kind=kind)
        if before == kind:                  # logged once per kind of problem, not per pass
            return
        if status == "not-in-tenant":       # a standing fact about the directory, not an error
            log.warning("calendar.user_skipped", user=user["email"], reason=report.error)
        else:
            log.error("calendar.user_failed", user=user["email"], status=status,
                      reason=report.error)

    def _sync_locked(self, user: dict, report: UserReport, should_stop) -> None:
        with self.engine.begin() as conn:
            state = store.state(conn, user["id"])
        graph_user = state.graph_user_id
        if graph_user is None:
            found = self.graph.find_user(user["addresses"])
            if found is None:
                raise NotInTenant("no user of the tenant has this address or an alias of it")
            graph_user = found["id"][:200]
            with self.engine.begin() as conn:
                store.save_state(conn, user["id"], graph_user_id=graph_user)
        self._pull(user, graph_user, report, state, should_stop)
        self._push(user, graph_user, report)
        with self.engine.begin() as conn:
            if state.error_kind is not None:
                log.info("calendar.user_recovered", user=user["email"])
            store.save_state(conn, user["id"], last_success=store.now(), last_error=None,
                             error_kind=None)
            store.link_invitations(conn, user["id"])
            store.prune_trace(conn, user["id"])
        log.info("calendar.user_synced", user=user["email"], full=report.full_sync,
                 pulled=report.pulled, pushed=report.pushed, conflicts=report.conflicts)

    # ------------------------------------------------------------------------ Outlook -> CRM
    def _window(self):
        today = store.now().replace(hour=0, minute=0, second=0)
        return (today - timedelta(days=self.config.days_back),
                today + timedelta(days=self.config.days_ahead))

    def _pull(self, user, graph_user, report, state, should_stop) -> None:
        # A deltaLink keeps the window it was made for; anchored to today, the window moves
        # once a day (one full round a day), and at once when the configured days change.
        window = f"{self.config.days_back}/{self.config.days_ahead}/{self._window()[0].date()}"
        link = state.delta_link if state.window == window else None
        try:
            self._round(user, graph_user, report, link, window, should_stop)
        except SyncStateGone:
            log.warning("calendar.delta_expired", user=user["email"])
            with self.engine.begin() as conn:
                store.save_state(conn, user["id"], delta_link=None)
                store.trace(conn, user["id"], "resync", "delta token expired (410)")
            self._round(user, graph_user, report, None, window, should_stop)

    def _round(self, user, graph_user, report, link, window, should_stop) -> None:
        start, end = self._window()
        rnd = _Round(user, report, full=link is None)
        report.full_sync = report.full_sync or rnd.full
        url = link or self.graph.delta_start(graph_user, start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                             end.strftime("%Y-%m-%dT%H:%M:%SZ"))
        for events, delta_link in self.graph.delta_pages(url):
            if should_stop():
                raise Stopped()
            with self.engine.begin() as conn:
                for event in events:
                    self._apply(conn, rnd, event)
        if rnd.full:
            self._after_full_round(rnd, start, end)
        self._refresh_masters(graph_user, rnd)
        # Stored last: a round killed before this line is repeated from the previous link.
        with self.engine.begin() as conn:
            store.save_state(conn, user["id"], delta_link=delta_link, window=window)

    def _apply(self, conn, rnd: _Round, event: dict) -> None:
        uid, fields = rnd.user["id"], from_graph(event)
        if fields["graph_id"] is None:
            return
        if "@removed" in event:
            self._removed(conn, rnd, fields["graph_id"])
            return
        rnd.seen.add(fields["graph_id"])
        if fields["series_master_id"]:
            rnd.masters.add(fields["series_master_id"])
        row = store.find_row(conn, uid, fields, event.get("transactionId"))
        if row is not None and row.graph_id == fields["graph_id"] \
                and row.change_key == fields["change_key"]:
            rnd.report.pulled["unchanged"] += 1    # our own edit coming back, or nothing new
            return
        # (a row found by our transactionId is our own POST whose answer a crash lost: adopt it)
        if row is not None and row.graph_id is not None and self._crm_changed(row) \
                and self._crm_wins(conn, rnd, row, fields):
            return
        values = self._synced(conn, rnd, fields)
        if row is None:
            activity_id = self._insert(conn, rnd, values)
            rnd.report.pulled["created"] += 1
        else:
            activity_id = row.id
            conn.execute(update(A).where(A.c.id == row.id).values(**values))
            rnd.report.pulled["updated"] += 1
        self._link(conn, rnd, activity_id, fields)

    @staticmethod
    def _synced(conn, rnd: _Round, fields: dict) -> dict:
        """A row's values from Outlook's fields, agreed by both sides as of now."""
        return {**fields, "synced_hash": digest(fields), "synced_at": store.now(),
                "outlook": True, "crm_deleted": False,
                "invitation_id": store.invitation_for(conn, rnd.user["id"], fields["ical_uid"])}

    def _insert(self, conn, rnd: _Round, values: dict) -> int:
        if rnd.type_id is None:
            rnd.type_id = store.activity_type(conn, self.config.activity_type) or 0
        values = {**values, "user_id": rnd.user["id"], "type_name": self.config.activity_type,
                  "type_id": rnd.type_id or None}
        return conn.execute(insert(A).values(**values)).inserted_primary_key[0]

    @staticmethod
    def _link(conn, rnd: _Round, activity_id: int, fields: dict) -> None:
        parties = {a["email"] for a in fields["attendees"]} | {fields["organizer"]} - {None}
        store.link_parties(conn, activity_id, parties - set(rnd.user["addresses"]))

    def _cancelled_before(self, conn, rnd: _Round, master: dict) -> None:
        """Occurrences cancelled in Outlook before this sink saw them: the calendar view never
        lists a cancelled occurrence, only its master's ``cancelledOccurrences`` does. Each one
        in the window that is no row yet becomes one, cancelled (an occurrence cancelled after
        it was synchronised is already a row: its ``@removed`` marked it)."""
        start, end = self._window()
        uid = rnd.user["id"]
        found = cancelled_occurrences(master, from_graph(master))
        known = store.occurrence_starts(conn, uid, found[0]["series_master_id"]) if found else []
        for fields in found:
            at = fields["original_start"]
            # within 12 hours: a series repeats at most daily, a time zone shifts by hours
            if not start <= fields["start"] <= end \
                    or any(abs(k - at) < timedelta(hours=12) for k in known):
                continue
            activity_id = self._insert(conn, rnd, self._synced(conn, rnd, fields))
            self._link(conn, rnd, activity_id, fields)
            store.trace(conn, uid, "cancelled-in-outlook",
                        f"cancelled before it was synchronised: {fields['start'].date()}",
                        activity_id=activity_id, graph_id=fields["series_master_id"])
            rnd.report.pulled["cancelled"] += 1

    @staticmethod
    def _crm_changed(row) -> bool:
        return row.crm_deleted or row.synced_hash is None or digest(row) != row.synced_hash

    def _crm_wins(self, conn, rnd: _Round, row, fields: dict) -> bool:
        """Both sides changed: the later change wins, and the trace says which and why."""
        crm_time, outlook_time = utc(row.crm_modified_at), fields["graph_modified_at"]
        crm_wins = crm_time is not None and (outlook_time is None or crm_time > outlook_time)
        rnd.report.conflicts += 1
        winner = "crm" if crm_wins else "outlook"
        store.trace(conn, rnd.user["id"], "conflict",
                    f"{winner} wins: crm changed {crm_time and crm_time.isoformat()}, "
                    f"outlook changed {outlook_time and outlook_time.isoformat()}",
                    activity_id=row.id, graph_id=fields["graph_id"])
        log.info("calendar.conflict", user=rnd.user["email"], activity=row.id, winner=winner)
        if crm_wins:                        # keep the CRM's fields; the push overwrites Outlook
            conn.execute(update(A).where(A.c.id == row.id).values(
                graph_id=fields["graph_id"], change_key=fields["change_key"],
                graph_modified_at=outlook_time))
        return crm_wins

    def _removed(self, conn, rnd: _Round, graph_id: str) -> None:
        uid = rnd.user["id"]
        row = store.by_graph_id(conn, uid, graph_id)
        if row is None:
            return
        if row.series_master_id:            # an occurrence deleted from a series: cancelled
            rnd.masters.add(row.series_master_id)
            if not row.cancelled:
                _mark_cancelled(conn, row)
                store.trace(conn, uid, "cancelled-in-outlook", activity_id=row.id,
                            graph_id=graph_id)
                rnd.report.pulled["cancelled"] += 1
            return
        self._delete_row(conn, rnd, row, "deleted-in-outlook")

    def _delete_row(self, conn, rnd: _Round, row, why: str) -> None:
        uid = rnd.user["id"]
        if row.event_type == "seriesMaster" and row.graph_id:
            conn.execute(delete(A).where(A.c.user_id == uid,
                                         A.c.series_master_id == row.graph_id))
        conn.execute(delete(A).where(A.c.id == row.id))
        store.trace(conn, uid, why, row.subject[:200], activity_id=row.id, graph_id=row.graph_id)
        rnd.report.pulled["deleted"] += 1

    def _after_full_round(self, rnd: _Round, start, end) -> None:
        """Rows of the window a full round did not see were deleted in Outlook meanwhile
        (kept: masters, which calendarView never lists, and known cancelled occurrences)."""
        with self.engine.begin() as conn:
            rows = conn.execute(A.select().where(
                A.c.user_id == rnd.user["id"], A.c.graph_id.is_not(None))).all()
            for row in rows:
                if row.event_type == "seriesMaster":
                    rnd.masters.add(row.graph_id)
                    continue
                inside = row.start is not None and start <= utc(row.start) <= end
                if row.graph_id in rnd.seen or not inside \
                        or (row.series_master_id and row.cancelled):
                    continue
                self._delete_row(conn, rnd, row, "gone-in-full-sync")

    def _refresh_masters(self, graph_user: str, rnd: _Round) -> None:
        for master_id in sorted(rnd.masters):
            event = self.graph.get_series_master(graph_user, master_id)
            with self.engine.begin() as conn:
                if event is not None:
                    self._apply(conn, rnd, event)
                    self._cancelled_before(conn, rnd, event)
                    continue
                row = store.by_graph_id(conn, rnd.user["id"], master_id)
                if row is not None:
                    self._delete_row(conn, rnd, row, "series-deleted-in-outlook")
                conn.execute(delete(A).where(A.c.user_id == rnd.user["id"],
                                             A.c.series_master_id == master_id))

    # ------------------------------------------------------------------------ CRM -> Outlook
    def _push(self, user: dict, graph_user: str, report: UserReport) -> None:
        with self.engine.connect() as conn:
            rows = store.calendar_rows(conn, user["id"])
        for row in rows:
            if not self._crm_changed(row):
                continue
            try:
                self._push_row(user, graph_user, report, row)
            except GraphError as exc:
                if exc.status not in REFUSALS or isinstance(exc, MailboxUnavailable):
                    raise                   # the user's problem, not this row's: retried
                self._refused(user, row, exc)

    def _refused(self, user: dict, row, exc: GraphError) -> None:
        """Graph will not take this activity as it is (e.g. end before start): say so once
        and leave it until the CRM edits it again, instead of failing the user every pass."""
        with self.engine.begin() as conn:
            conn.execute(update(A).where(A.c.id == row.id).values(synced_hash=digest(row)))
            store.trace(conn, user["id"], "refused-by-outlook", str(exc), activity_id=row.id,
                        graph_id=row.graph_id)
        log.warning("calendar.push_refused", user=user["email"], activity=row.id,
                    status=exc.status, code=exc.code)

    def _not_restored(self, user: dict, row) -> None:
        """The CRM un-cancelled an occurrence that Outlook cancelled before we saw it (it has
        no Graph id): Graph has no call that restores an occurrence, and a new single event
        would not be one of the series. Outlook's state stands, and the trace says why."""
        with self.engine.begin() as conn:
            _mark_cancelled(conn, row)
            store.trace(conn, user["id"], "refused-by-outlook",
                        "a cancelled occurrence cannot be restored", activity_id=row.id,
                        graph_id=row.series_master_id)

    def _push_row(self, user, graph_user, report, row) -> None:
        uid = user["id"]
        if row.crm_deleted or (row.cancelled and row.series_master_id):
            if row.graph_id:
                self.graph.delete_event(graph_user, row.graph_id)
            with self.engine.begin() as conn:
                if row.crm_deleted:
                    conn.execute(delete(A).where(A.c.id == row.id))
                else:                       # a cancelled occurrence stays, as cancelled
                    conn.execute(update(A).where(A.c.id == row.id).values(
                        synced_hash=digest(row), synced_at=store.now()))
                store.trace(conn, uid, "deleted-in-outlook-by-crm", activity_id=row.id,
                            graph_id=row.graph_id)
            report.pushed["deleted"] += 1
            return
        if row.graph_id is None and row.series_master_id:
            self._not_restored(user, row)
            return
        body = to_graph(row)
        if row.graph_id is None:
            body["transactionId"] = f"{store.TRANSACTION_PREFIX}{row.id}"
            answer, action = self.graph.create_event(graph_user, body), "created"
        else:
            answer, action = self.graph.update_event(graph_user, row.graph_id, body), "updated"
        with self.engine.begin() as conn:
            if answer is None:              # gone in Outlook before our update reached it
                self._delete_row(conn, _Round(user, report, False), row, "deleted-in-outlook")
                return
            fields = from_graph(answer)
            conn.execute(update(A).where(A.c.id == row.id).values(
                graph_id=fields["graph_id"] or row.graph_id, change_key=fields["change_key"],
                graph_modified_at=fields["graph_modified_at"],
                ical_uid=fields["ical_uid"] or row.ical_uid,
                synced_hash=digest(row), synced_at=store.now()))
            store.trace(conn, uid, f"{action}-in-outlook", activity_id=row.id,
                        graph_id=fields["graph_id"])
        report.pushed[action] += 1


def _mark_cancelled(conn, row) -> None:
    """The occurrence ``row`` cancelled, as both sides now agree."""
    values = {**row._mapping, "cancelled": True}
    conn.execute(update(A).where(A.c.id == row.id).values(
        cancelled=True, synced_hash=digest(values), synced_at=store.now()))

