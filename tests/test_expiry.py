"""SPEC 7: "a token or certificate about to expire" is an error mail (found in review: nothing
looked). Certificates made here with trustme, the end of validity chosen."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import trustme

from sink.expiry import CertificateWatch, expiring
from tests.conftest import config_for

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)


def cert_file(tmp_path, name: str, days: float) -> str:
    leaf = trustme.CA().issue_cert("sink.firma.cz", not_after=NOW + timedelta(days=days))
    path = tmp_path / name
    leaf.cert_chain_pems[0].write_to_path(str(path))
    leaf.private_key_pem.write_to_path(str(tmp_path / (name + ".key")))
    return str(path)


def test_a_listener_certificate_within_two_weeks_of_its_end_is_mailed(tmp_path):
    soon, later = cert_file(tmp_path, "soon.pem", 5), cert_file(tmp_path, "later.pem", 300)
    gone = cert_file(tmp_path, "gone.pem", -1)
    assert expiring(soon, NOW) is not None and expiring(later, NOW) is None
    assert expiring(str(tmp_path / "missing.pem"), NOW) is None
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
    assert expiring(str(tmp_path / "junk.pem"), NOW) is None
    config = config_for("sqlite://", listeners=[
        {"protocol": "smtp", "address": "127.0.0.1:2525", "tls_cert": soon,
         "tls_key": soon + ".key", "tls_client_ca": gone},
        {"protocol": "smtp", "address": "127.0.0.1:2526", "tls_cert": later,
         "tls_key": later + ".key"}])
    mails = []
    watch = CertificateWatch(config, lambda *mail: mails.append(mail), clock=lambda: NOW)
    found = watch.check()
    assert len(found) == 2 and "expires in 5 days" in found[0] and "has expired" in found[1]
    [(kind, subject, body)] = mails
    assert kind == "credential" and "listeners[0].tls_cert (127.0.0.1:2525)" in subject
    assert soon in body and gone in body and later not in body
    mails.clear()
    later_watch = CertificateWatch(config, lambda *mail: mails.append(mail),
                                   clock=lambda: NOW - timedelta(days=60))
    assert later_watch.check() == [] and mails == []      # two months before: nothing


def test_the_watch_runs_in_the_background_and_stops(tmp_path):
    soon = cert_file(tmp_path, "soon.pem", 3)
    config = config_for("sqlite://", listeners=[
        {"protocol": "smtp", "address": "127.0.0.1:2525", "tls_cert": soon,
         "tls_key": soon + ".key"}])
    mails = []

    async def run():
        watch = CertificateWatch(config, lambda *mail: mails.append(mail), every=0.05,
                                 clock=lambda: NOW)
        await watch.start()
        await asyncio.sleep(0.3)
        await watch.stop()
    asyncio.run(run())
    assert len(mails) >= 2 and all(m[0] == "credential" for m in mails)
