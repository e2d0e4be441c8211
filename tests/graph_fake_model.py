"""The state behind the fake Microsoft (tests/graph_fake.py): the application's credentials,
the tenant's users and their calendars, change sequence numbers for delta rounds."""

from __future__ import annotations

import copy
import itertools
import re
import threading
import uuid
from datetime import datetime, timedelta, timezone

PAGE_SIZE = 2                 # small, so every round of a test pages through @odata.nextLink

# The properties of Graph v1.0's event resource (learn.microsoft.com/graph/api/resources/event)
EVENT_PROPERTIES = frozenset("""allowNewTimeProposals attendees body bodyPreview
    cancelledOccurrences categories changeKey createdDateTime end exceptionOccurrences
    hasAttachments hideAttendees iCalUId id importance isAllDay isCancelled isDraft
    isOnlineMeeting isOrganizer isReminderOn lastModifiedDateTime location locations
    occurrenceId onlineMeeting onlineMeetingProvider onlineMeetingUrl organizer
    originalEndTimeZone originalStart originalStartTimeZone recurrence
    reminderMinutesBeforeStart responseRequested responseStatus sensitivity seriesMasterId
    showAs start subject transactionId type webLink""".split())


def iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def graph_time(value: datetime) -> dict:
    return {"dateTime": value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.0000000"),
            "timeZone": "UTC"}


def parse_graph_time(value: dict) -> datetime:
    return datetime.fromisoformat(value["dateTime"].split(".")[0]).replace(tzinfo=timezone.utc)


def _error(status, code, message):
    return status, {}, {"error": {"code": code, "message": message}}


class Tenant:
    def __init__(self, tenant_id="5f1c7e9a-firma-tenant", client_id="8d2a-crm-sink-app",
                 secret="s3cret~value"):
        self.tenant_id, self.client_id, self.secret = tenant_id, client_id, secret
        self.secret_revoked = False
        self.lock = threading.RLock()
        self.tokens: set[str] = set()
        self.users: dict[str, dict] = {}
        self.events: dict[str, dict[str, dict]] = {}
        self.tombstones: dict[str, dict[str, int]] = {}
        self.seq = itertools.count(1)
        self.now_seq = 0
        self.delta_tokens: dict[str, tuple] = {}
        self.pages: dict[str, tuple] = {}
        self.graph_base = ""
        self.page_size = PAGE_SIZE

    # ------------------------------------------------------------------------------ Entra ID
    def issue_token(self, form: dict):
        if form.get("grant_type") != "client_credentials" \
                or "https://graph.microsoft.com/.default" not in form.get("scope", ""):
            return 400, {}, {"error": "invalid_request",
                             "error_description": "AADSTS90014: The required field is missing."}
        if form.get("client_id") != self.client_id:
            return 400, {}, {"error": "unauthorized_client", "error_codes": [700016],
                             "error_description": f"AADSTS700016: Application with identifier "
                             f"'{form.get('client_id')}' was not found in the directory."}
        if form.get("client_secret") != self.secret or self.secret_revoked:
            return 401, {}, {
                "error": "invalid_client", "error_codes": [7000215],
                "error_description": "AADSTS7000215: Invalid client secret provided. Ensure "
                "the secret being sent in the request is the client secret value, not the "
                "client secret ID, for a secret added to app '8d2a-crm-sink-app'.\r\n"
                f"Trace ID: {uuid.uuid4()}\r\nCorrelation ID: {uuid.uuid4()}\r\n"
                "Timestamp: 2026-12-01 10:00:00Z",
                "timestamp": "2026-12-01 10:00:00Z", "trace_id": str(uuid.uuid4()),
                "correlation_id": str(uuid.uuid4()),
                "error_uri": "https://login.microsoftonline.com/error?code=7000215"}
        token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + uuid.uuid4().hex
        self.tokens.add(token)
        return 200, {}, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                         "access_token": token}

    def valid_token(self, token: str) -> bool:
        return token in self.tokens

    # --------------------------------------------------------------------------------- users
    def add_user(self, mail: str, aliases=(), mailbox: bool = True) -> str:
        user_id = str(uuid.uuid4())
        self.users[user_id] = {"id": user_id, "mail": mail, "userPrincipalName": mail,
                               "proxyAddresses": [f"SMTP:{mail}", *(f"smtp:{a}" for a in aliases)],
                               "mailbox": mailbox}
        self.events[user_id], self.tombstones[user_id] = {}, {}
        return user_id

    def find_users(self, expression: str) -> list[dict]:
        wanted = {m.lower() for m in re.findall(r"mail eq '((?:[^']|'')*)'", expression)}
        proxies = {m.lower() for m in re.findall(r"eq 'smtp:((?:[^']|'')*)'", expression)}
        found = []
        for user in self.users.values():
            smtp = {p.lower().removeprefix("smtp:") for p in user["proxyAddresses"]}
            if user["mail"].lower() in wanted or smtp & proxies:
                found.append({"id": user["id"], "mail": user["mail"],
                              "userPrincipalName": user["userPrincipalName"]})
        return found

    # -------------------------------------------------------------------------------- events
    def _touch(self, event: dict, modified: datetime | None = None) -> None:
        event["changeKey"] = uuid.uuid4().hex[:22]
        event["@odata.etag"] = f'W/"{event["changeKey"]}"'
        event["lastModifiedDateTime"] = iso(modified or datetime.now(timezone.utc))
        self.now_seq = event["_seq"] = next(self.seq)

    def _new(self, user_id: str, subject: str, start: datetime, end: datetime, **more) -> dict:
        event_id = "AAMkAGI2T" + uuid.uuid4().hex
        organizer = self.users[user_id]["mail"]
        event = {
            "@odata.type": "#microsoft.graph.event", "id": event_id,
            "createdDateTime": iso(datetime.now(timezone.utc)), "categories": [],
            "transactionId": None, "originalStartTimeZone": "UTC", "originalEndTimeZone": "UTC",
            "iCalUId": "040000008200E00074C5B7101A82E008" + uuid.uuid4().hex.upper(),
            "reminderMinutesBeforeStart": 15, "isReminderOn": True, "hasAttachments": False,
            "subject": subject, "bodyPreview": "", "importance": "normal",
            "sensitivity": "normal", "isAllDay": False, "isCancelled": False,
            "isOrganizer": True, "responseRequested": True, "seriesMasterId": None,
            "showAs": "busy", "type": "singleInstance",
            "webLink": f"https://outlook.office365.com/owa/?itemid={event_id}",
            "onlineMeetingUrl": None, "isOnlineMeeting": False,
            "responseStatus": {"response": "organizer", "time": "0001-01-01T00:00:00Z"},
            "body": {"contentType": "html", "content": ""},
            "start": graph_time(start), "end": graph_time(end),
            "location": {"displayName": "", "locationType": "default",
                         "uniqueIdType": "unknown"},
            "locations": [], "recurrence": None, "attendees": [],
            "organizer": {"emailAddress": {"name": organizer, "address": organizer}},
        }
        for key, value in more.items():
            if key == "location":
                event["location"]["displayName"] = value
            elif key == "attendees":
                event["attendees"] = [self._attendee(a) for a in value]
            else:
                event[key] = value
        self._touch(event)
        self.events[user_id][event_id] = event
        return event

    @staticmethod
    def _attendee(address) -> dict:
        if isinstance(address, dict):         # already Graph's shape (a POST or PATCH body)
            address = address.get("emailAddress", {}).get("address", "")
        return {"type": "required", "status": {"response": "none",
                                               "time": "0001-01-01T00:00:00Z"},
                "emailAddress": {"name": address.split("@")[0], "address": address}}

    def add_event(self, user_id, subject, start, hours=1.0, **more) -> str:
        with self.lock:
            return self._new(user_id, subject, start, start + timedelta(hours=hours), **more)["id"]

    def add_series(self, user_id, subject, first, count, hours=1.0, **more):
        """A weekly series of ``count`` occurrences: (master id, [instance ids])."""
        with self.lock:
            master = self._new(user_id, subject, first, first + timedelta(hours=hours),
                               type="seriesMaster", recurrence={
                                   "pattern": {"type": "weekly", "interval": 1, "month": 0,
                                               "dayOfMonth": 0, "firstDayOfWeek": "sunday",
                                               "index": "first",
                                               "daysOfWeek": [first.strftime("%A").lower()]},
                                   "range": {"type": "numbered",
                                             "startDate": first.date().isoformat(),
                                             "endDate": "0001-01-01", "recurrenceTimeZone": "UTC",
                                             "numberOfOccurrences": count}}, **more)
            return master["id"], self._instances(user_id, master, first, count, hours)

    def _instances(self, user_id, master, first, count, hours, step=timedelta(weeks=1)):
        ids = []
        for i in range(min(count, 500)):
            start = first + step * i
            instance = self._new(user_id, master["subject"], start, start + timedelta(hours=hours),
                                 type="occurrence", seriesMasterId=master["id"],
                                 originalStart=iso(start), iCalUId=master["iCalUId"])
            instance["attendees"] = copy.deepcopy(master["attendees"])
            instance["location"] = copy.deepcopy(master["location"])
            ids.append(instance["id"])
        return ids

    def edit(self, user_id, event_id, modified: datetime | None = None, **fields) -> None:
        """An edit made in Outlook."""
        with self.lock:
            event = self.events[user_id][event_id]
            for key, value in fields.items():
                if key == "location":
                    event["location"]["displayName"] = value
                elif key in ("start", "end"):
                    event[key] = graph_time(value)
                else:
                    event[key] = value
            if event["type"] == "occurrence":
                event["type"] = "exception"
            self._touch(event, modified)

    def remove(self, user_id, event_id) -> None:
        """A deletion made in Outlook (of an occurrence: that occurrence is cancelled)."""
        with self.lock:
            event = self.events[user_id].pop(event_id)
            self.now_seq = self.tombstones[user_id][event_id] = next(self.seq)
            master = self.events[user_id].get(event.get("seriesMasterId") or "")
            if master is not None:      # its date in the recurrence's zone (here UTC)
                master.setdefault("_cancelled", []).append(
                    f"OID.{master['id']}.{event['originalStart'][:10]}")
            if event["type"] == "seriesMaster":
                for other in list(self.events[user_id].values()):
                    if other.get("seriesMasterId") == event_id:
                        self.remove(user_id, other["id"])

    def public(self, event: dict) -> dict:
        return {k: copy.deepcopy(v) for k, v in event.items() if not k.startswith("_")}

    def visible(self, user_id: str) -> list[dict]:
        return [e for e in self.events[user_id].values() if e["type"] != "seriesMaster"]

    # -------------------------------------------------------------------------- delta rounds
    def expire_delta_tokens(self) -> None:
        self.delta_tokens.clear()

    def delta(self, user_id: str, query: dict):
        if "$skiptoken" in query:
            if query["$skiptoken"] not in self.pages:
                return _error(410, "SyncStateNotFound", "The sync state is not found.")
            items, final = self.pages.pop(query["$skiptoken"])
            return self._page(user_id, items, final)
        if "$deltatoken" in query:
            state = self.delta_tokens.get(query["$deltatoken"])
            if state is None or state[0] != user_id:
                return _error(410, "SyncStateNotFound",
                              "The sync state generation is not found or has expired.")
            _, start, end, since = state
        else:
            try:
                start = datetime.fromisoformat(query["startDateTime"].replace("Z", "+00:00"))
                end = datetime.fromisoformat(query["endDateTime"].replace("Z", "+00:00"))
            except (KeyError, ValueError):
                return _error(400, "ErrorInvalidParameter",
                              "This request requires a time window specified by the query "
                              "string parameters StartDateTime and EndDateTime.")
            since = 0
        items = []
        for event in sorted(self.visible(user_id), key=lambda e: e["_seq"]):
            inside = parse_graph_time(event["start"]) < end \
                and parse_graph_time(event["end"]) > start
            if event["_seq"] > since and inside:
                items.append(self.public(event))
        if since:
            items += [{"@odata.type": "#microsoft.graph.event", "id": event_id,
                       "@removed": {"reason": "deleted"}}
                      for event_id, seq in self.tombstones[user_id].items() if seq > since]
        token = uuid.uuid4().hex
        self.delta_tokens[token] = (user_id, start, end, self.now_seq)
        return self._page(user_id, items, token)

    def _page(self, user_id: str, items: list, final: str):
        page, rest = items[:self.page_size], items[self.page_size:]
        base = f"{self.graph_base}/users/{user_id}/calendarView/delta"
        body = {"@odata.context": f"{self.graph_base}/$metadata#Collection(event)",
                "value": page}
        if rest:
            skip = uuid.uuid4().hex
            self.pages[skip] = (rest, final)
            body["@odata.nextLink"] = f"{base}?$skiptoken={skip}"
        else:
            body["@odata.deltaLink"] = f"{base}?$deltatoken={final}"
        return 200, {}, body

    # ------------------------------------------------------------------------ events (CRUD)
    def get(self, user_id, event_id, select: str | None = None):
        """Graph's GET of one event: with ``$select``, only those properties (and ``id``,
        ``@odata.etag``); ``cancelledOccurrences`` only when selected, and only on a series
        master (Graph's documented behaviour); a property Graph does not know is a 400."""
        event = self.events[user_id].get(event_id)
        if event is None:
            return _error(404, "ErrorItemNotFound", "The specified object was not found in "
                          "the store.")
        public = self.public(event)
        if not select:
            return 200, {}, public
        wanted = [name.strip() for name in select.split(",") if name.strip()]
        out = {"@odata.etag": public["@odata.etag"], "id": public["id"]}
        for name in wanted:
            if name not in EVENT_PROPERTIES:
                return _error(400, "RequestBroker--ParseUri", f"Could not find a property "
                              f"named '{name}' on type 'microsoft.graph.event'.")
            if name == "cancelledOccurrences":
                if event["type"] == "seriesMaster":
                    out[name] = list(event.get("_cancelled", []))
            elif name != "exceptionOccurrences":    # a relationship: only with $expand
                out[name] = public.get(name)        # selected and not set: null
        return 200, {}, out

    def create(self, user_id, body: dict):
        transaction = body.get("transactionId")
        for event in self.events[user_id].values():
            if transaction and event.get("transactionId") == transaction:
                return 201, {}, self.public(event)   # a retried POST: the same event
        try:
            start, end = parse_graph_time(body["start"]), parse_graph_time(body["end"])
        except (KeyError, TypeError, ValueError):
            return _error(400, "ErrorInvalidRequest", "start and end are required")
        kind = "seriesMaster" if body.get("recurrence") else "singleInstance"
        event = self._new(user_id, body.get("subject", ""), start, end, type=kind,
                          transactionId=transaction, recurrence=body.get("recurrence"),
                          isAllDay=bool(body.get("isAllDay")),
                          location=(body.get("location") or {}).get("displayName", ""),
                          attendees=body.get("attendees") or [])
        if kind == "seriesMaster":
            count = body["recurrence"].get("range", {}).get("numberOfOccurrences", 10)
            self._instances(user_id, event, start, count, (end - start).total_seconds() / 3600)
        return 201, {}, self.public(event)

    def patch(self, user_id, event_id, body: dict):
        event = self.events[user_id].get(event_id)
        if event is None:
            return self.get(user_id, event_id)
        for key in ("subject", "start", "end", "isAllDay", "recurrence"):
            if key in body:
                event[key] = body[key]
        if "location" in body:
            event["location"]["displayName"] = (body["location"] or {}).get("displayName", "")
        if "attendees" in body:
            event["attendees"] = [self._attendee(a) for a in body["attendees"]]
        for key in ("start", "end"):
            if key in body:
                event[key] = graph_time(parse_graph_time(body[key]))
        if event["type"] == "occurrence":
            event["type"] = "exception"
        self._touch(event)
        return 200, {}, self.public(event)

    def delete(self, user_id, event_id):
        if event_id not in self.events[user_id]:
            return self.get(user_id, event_id)
        self.remove(user_id, event_id)
        return 204, {}, None
