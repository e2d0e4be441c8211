"""The DKIM result of a message (SPEC 2.3): ``pass``, ``fail``, ``none`` or ``temperror``.

Two sources, in this order:
- an ``Authentication-Results`` header whose authserv-id is one of the box's
  ``trusted_authserv_ids`` (our own MTA, which verified the message before it reached us) -
  :func:`from_authentication_results`, pure and cheap, decided per box;
- otherwise dkimpy's verification of the message's own ``DKIM-Signature`` headers -
  :func:`verify`, once per message, with DNS lookups bounded by :data:`DNS_TIMEOUT`.

A signature counts only when it verifies for the From domain (its ``d=`` is that domain or a
parent of it): anybody can sign a forged From with a key of their own domain. A DNS failure is
``temperror`` - never a reason to defer mail, only a message that is not authenticated.
Headers are attacker-controlled bytes: every parse here is defensive and never raises.

A signature whose key is remembered as unavailable (:class:`_KeyCache`: no key, or the lookup
failed) is settled before dkimpy is asked: dkimpy would parse the whole message, format debug
messages and log an error to come to the same "not verified" (issue 16: 163 us of CPU per bench
message, where no bench signature's key is in DNS, now 60 us, and no thread hand-off). The
signature is still read and validated by dkimpy's own functions, so what dkimpy would refuse
before looking up the key is refused the same way.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Iterable, Sequence

import authres
import dkim as dkimpy
from dkim import dnsplug

PASS, FAIL, NONE, TEMPERROR = "pass", "fail", "none", "temperror"
DNS_TIMEOUT = 2.0
MAX_SIGNATURES = 5           # a message with 1,000 signatures must not cost 1,000 DNS lookups
BATCH_BOUND = 3.0            # seconds a whole batch may spend verifying (several in parallel)
KEY_TTL = 3600.0             # a selector's public key is remembered this long ...
MISS_TTL = 300.0             # ... a key that is not there, or a lookup that failed, this long
CACHE_SIZE = 10_000
# dkimpy holds a message three to four times over while it verifies (its own copy of the body,
# the canonical form, ...): a 40 MB message peaked at 3.7 times its size in the storage
# worker. Bigger messages are not verified: ``temperror``, as when DNS does not answer - not
# authenticated, never deferred (a carrier that big is trusted only through a trusted
# Authentication-Results header; SPEC 2.3).
MAX_VERIFY_BYTES = 16 * 1024 * 1024
LOOKUP_FAILED, NO_KEY = "lookup failed", "no key"


class _KeyCache:
    """The resolver's answers for ``selector._domainkey.domain``, remembered in this process.

    The storage worker commits a batch only once its DKIM verdicts are in, so every lookup is
    on the way to a 250: the same few senders' keys are asked for all day, and a resolver that
    does not answer would cost every signed message its timeout (measured: 26 instead of 860
    messages a second, p99 2.2 s). A failure is remembered too, for a shorter time, so a DNS
    outage costs one timeout per key every MISS_TTL, not one per message."""

    _FAILED = object()

    def __init__(self, resolve=None, clock=time.monotonic):
        self.resolve = resolve or (lambda name, timeout: dnsplug.get_txt(name, timeout=timeout))
        self.clock = clock
        self._answers: dict = {}
        self._lock = threading.Lock()

    def unavailable(self, name) -> str | None:
        """What is remembered, unexpired, against a key for ``name``: :data:`LOOKUP_FAILED`
        (the lookup failed: temperror), :data:`NO_KEY` (no key or an empty answer: the
        signature cannot verify), or None (a key, or nothing remembered: ask dkimpy)."""
        with self._lock:
            found = self._answers.get(name)
        if found is None or found[0] <= self.clock():
            return None
        if found[1] is self._FAILED:
            return LOOKUP_FAILED
        return None if found[1] else NO_KEY

    def __call__(self, name, timeout=None):
        now = self.clock()
        with self._lock:
            found = self._answers.get(name)
        if found is not None and found[0] > now:
            if found[1] is self._FAILED:
                raise LookupError(f"DNS lookup of {name!r} failed recently")
            return found[1]
        try:
            answer = self.resolve(name, timeout)
        except Exception:
            self._remember(name, self._FAILED, now + MISS_TTL)
            raise
        self._remember(name, answer, now + (KEY_TTL if answer else MISS_TTL))
        return answer

    def _remember(self, name, answer, until: float) -> None:
        with self._lock:
            if len(self._answers) >= CACHE_SIZE:
                self._answers.clear()       # rare: a flood of distinct selectors
            self._answers[name] = (until, answer)


_KEYS = _KeyCache()

DnsFunc = Callable[..., bytes | None]


def aligned(signing_domain: str | None, from_domain: str | None) -> bool:
    """``d=`` is the From domain or a parent of it (relaxed alignment)."""
    if not signing_domain or not from_domain:
        return False
    d, f = signing_domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    return f == d or f.endswith("." + d)


def from_authentication_results(headers: Iterable[str], trusted_ids: Sequence[str],
                                from_domain: str | None) -> str | None:
    """The result a trusted ``Authentication-Results`` header states for the From domain, or
    None when no header of a trusted authserv-id speaks of DKIM. Headers of other ids are
    ignored: a sender can write any header it likes."""
    trusted = {t.lower() for t in trusted_ids}
    if not trusted:
        return None
    verdict = None
    for value in headers:
        try:
            header = authres.AuthenticationResultsHeader.parse_value(str(value))
        except Exception:          # a malformed header is no statement at all
            continue
        if str(header.authserv_id or "").lower() not in trusted:
            continue
        for result in header.results:
            if getattr(result, "method", None) != "dkim":
                continue
            outcome = str(result.result or "").lower()
            domain = getattr(result, "header_d", None) or _domain_of_i(result)
            if outcome == PASS and aligned(domain, from_domain):
                return PASS
            if outcome == TEMPERROR:
                verdict = verdict or TEMPERROR
            elif outcome in (PASS, FAIL, "permerror", "neutral", "policy"):
                verdict = FAIL if verdict in (None, NONE) else verdict
            elif outcome == NONE:
                verdict = verdict or NONE
    return verdict


def _domain_of_i(result) -> str | None:
    identity = getattr(result, "header_i", None)
    return identity.rpartition("@")[2] if identity else None


class _Lookup:
    """The DNS function handed to dkimpy, remembering whether a lookup failed (a failure is
    temperror, a key that is not there is fail)."""

    def __init__(self, dnsfunc: DnsFunc | None, timeout: float):
        self.inner = dnsfunc or _KEYS
        self.timeout = timeout
        self.failed = False

    def __call__(self, name, timeout=None):
        try:
            return self.inner(name, timeout=self.timeout)
        except Exception:
            self.failed = True
            return None


def verify(raw: bytes, from_domain: str | None, *, dnsfunc: DnsFunc | None = None,
           timeout: float = DNS_TIMEOUT) -> str:
    """dkimpy's verdict on the message's own signatures for ``from_domain``."""
    plan = _plan(raw, dnsfunc, timeout)
    if isinstance(plan, str):
        return plan
    return _verify_signatures(raw, from_domain, *plan)


def _plan(raw: bytes, dnsfunc: DnsFunc | None, timeout: float):
    """The verdict when it is certain without dkimpy's verification (no signature, or every
    signature's key remembered as unavailable), else ``(lookup, indexes)``: the signatures
    dkimpy must verify, with the lookup that knows whether a skipped one's lookup failed."""
    count = _signature_count(raw)
    if count == 0:
        return NONE
    if len(raw) > MAX_VERIFY_BYTES:
        return TEMPERROR
    lookup = _Lookup(dnsfunc, timeout)
    indexes = list(range(min(count, MAX_SIGNATURES)))
    if isinstance(lookup.inner, _KeyCache):
        indexes = _needing_keys(raw, indexes, lookup)
    if not indexes:
        return TEMPERROR if lookup.failed else FAIL
    return lookup, indexes


def _verify_signatures(raw: bytes, from_domain: str | None, lookup: "_Lookup",
                       indexes: list[int]) -> str:
    for index in indexes:
        try:
            checker = dkimpy.DKIM(raw, timeout=lookup.timeout)
            ok = checker.verify(idx=index, dnsfunc=lookup)
        except Exception:          # a malformed signature, key or message: not verified
            continue
        signing = checker.domain.decode("ascii", "replace") if checker.domain else None
        if ok and aligned(signing, from_domain):
            return PASS
    return TEMPERROR if lookup.failed else FAIL


def _needing_keys(raw: bytes, indexes: list[int], lookup: "_Lookup") -> list[int]:
    """The signatures dkimpy must verify. The others come to "not verified" in dkimpy's
    ``verify`` too, read with dkimpy's own functions: the header does not parse, there is no
    such signature, the signature is malformed (all before any lookup), or its key is
    remembered as unavailable (the lookup is then marked failed here when it would be there)."""
    cache = lookup.inner
    try:
        signatures = signature_values(_head(raw))
    except Exception:           # dkimpy.DKIM(raw) raises the same: nothing is verified
        return []
    needing = []
    for index in indexes:
        if index >= len(signatures):
            continue            # verify_headerprep: no such signature, False
        try:
            sig = dkimpy.util.parse_tag_value(signatures[index])
            name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
        except Exception:       # verify_headerprep fails on it too, before any lookup
            continue
        miss = cache.unavailable(name)
        if miss is None:
            needing.append(index)
        elif miss == LOOKUP_FAILED and _valid(sig):
            lookup.failed = True    # dkimpy would have asked, and the lookup fails
    return needing


_NAME = b"".join(b"[%c%c]" % (c, c - 32) if 97 <= c <= 122 else re.escape(bytes([c]))
                for c in b"dkim-signature:")        # any case, spelt out: a literal first byte
# searched in "\n" + head: a pattern starting with a literal byte is scanned for in C
# (the line end after a header is left for the next match: it may start with one too)
_SIGNATURE = re.compile(rb"\n" + _NAME + rb"([^\r\n]*)((?:\r?\n[ \t][^\r\n]*)*)")


def signature_values(head: bytes) -> list[bytes]:
    """The DKIM-Signature values of ``head`` as dkimpy's ``rfc822_parse`` gives them (each line
    of a header ended by CRLF), in order; raises where it raises. A plain header block is
    read by two searches in C (rfc822_parse takes ~25 us for 20 lines, a regex per line);
    anything else by rfc822_parse itself."""
    if not _plain(head):
        return [value for name, value in dkimpy.rfc822_parse(head)[0]
                if name.lower() == b"dkim-signature"]
    # (each line end made CRLF: replace's search is C's; the pattern \r?\n tried every byte)
    return [first + more.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
            for first, more in _SIGNATURE.findall(b"\n" + head)]


# A line start (after a line end, but the last) that is not a header line nor a continuation:
# searched for from one "\n" to the next in C, where a pattern over the whole head read every
# byte (~9-11 us for a 4 KB message's head, ~4-5 this way; tests/test_edge_speed.py keeps it
# as the reference).
_NAME_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
_ODD_LINE = re.compile(rb"\n(?![\x21-\x39\x3b-\x7e]+:|[ \t])")


def _plain(head: bytes) -> bool:
    """Whether ``head`` is a plain header block, the lines dkimpy's rfc822_parse reads with
    nothing to skip or refuse: every line ends with a line end (CRLF or LF), the first is a
    header line (a name without ":" or space, then ":"), each after it a header line or a
    continuation (space or tab), and every CR is that of a CRLF."""
    if not head:
        return True
    return (head.endswith(b"\n") and _NAME_START.match(head) is not None
            and head.count(b"\r") == head.count(b"\r\n")
            and _ODD_LINE.search(head, 0, len(head) - 1) is None)


def _valid(sig: dict) -> bool:
    """dkimpy's checks of a signature before it looks up the key (a key that is not there
    needs no check: invalid or not, the signature does not verify and nothing failed)."""
    try:
        dkimpy.validate_signature_fields(sig)
    except Exception:
        return False
    return True


def _head(raw: bytes) -> bytes:
    """The message up to the line end before its first empty line: rfc822_parse reads no
    further than that line, so its headers of this are its headers of the whole message,
    without splitting the body. Its line end is "\r?\n", so an empty line follows a "\n"
    that is followed by another line end (an empty first line stays the first line here)."""
    crlf = raw.find(b"\n\r\n")
    # the bare-LF search stops there: CRLF mail has no "\n\n", and an unbounded search read
    # the whole body for nothing (4 % of the worker's time at 100 KB)
    lf = raw.find(b"\n\n", 0, crlf + 2) if crlf >= 0 else raw.find(b"\n\n")
    ends = [at for at in (lf, crlf) if at >= 0]
    return raw[:min(ends) + 1] if ends else raw


def _signature_count(raw: bytes) -> int:
    # raw.split(sep, 1)[0], without the copy of the rest (a 40 MB body) that split makes
    end = raw.find(b"\r\n\r\n")
    head = raw[:end] if end >= 0 else raw
    end = head.find(b"\n\n")
    head = head[:end] if end >= 0 else head
    # the lines (as bytes.splitlines cuts them: after CR, LF or CRLF) that start with the
    # name: counted in the lower-cased head by two searches for a literal (a pattern opening
    # with a class, [\r\n], tried every offset: the count took 11 us for a 4 KB message, now
    # ~4-5 with the searches for the head's end)
    low = head.lower()
    return (low.startswith(b"dkim-signature:") + low.count(b"\ndkim-signature:")
            + low.count(b"\rdkim-signature:"))


def verify_many(items: Sequence[tuple[bytes, str | None]], *, dnsfunc: DnsFunc | None = None,
                timeout: float = DNS_TIMEOUT, bound: float = BATCH_BOUND,
                threads: int = 8) -> list[str]:
    """:func:`verify` for every ``(raw, from_domain)`` side by side in threads, so that one
    slow DNS answer does not hold up the batch behind it; what has not finished within
    ``bound`` seconds is ``temperror`` (never a reason to defer mail)."""
    if not items:
        return []
    results = [NONE] * len(items)
    plans = {}
    for i, (raw, _) in enumerate(items):
        plan = _plan(raw, dnsfunc, timeout)    # settled here without a thread when it can be
        if isinstance(plan, str):
            results[i] = plan
        else:
            plans[i] = plan
    if not plans:
        return results
    pool = _pool(threads)
    futures = {i: pool.submit(_verify_signatures, items[i][0], items[i][1], *plan)
               for i, plan in plans.items()}
    deadline = time.monotonic() + bound
    wait(futures.values(), timeout=max(0.0, deadline - time.monotonic()))
    for i, future in futures.items():
        if not future.done():
            future.cancel()             # not started yet: never started
        results[i] = future.result() if future.done() and not future.cancelled() \
            and not future.exception() else TEMPERROR
    return results


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool for the process: starting eight threads for every batch cost the storage
    worker 18 % of its time (py-spy, 4 KB load); a lookup still running past its batch's bound
    ends within its own DNS timeout."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sink-dkim")
        return _POOL
