"""Microsoft 365 end to end: msal's client credentials against a fake Entra ID over HTTPS
(a test CA; msal itself does the talking, nothing of it is mocked), the token sent as SASL
XOAUTH2 to a real Dovecot whose oauth2 passdb asks the fake to introspect it."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
import requests

from sink.config import parse_config
from sink.sources.oauth import TokenSource
from tests.dovecot_harness import Dovecot, dovecot_available
from tests.fake_entra import FakeEntra
from tests.sources_support import (BOX, PASSWORD, USER, message_count, run_poll, stored_raws,
                                   write_config)
from tests.support import make_mail, require
from tests.tlsutil import make_test_ca

TENANT = "8a3c1b2e-5d6f-4a7b-9c0d-1e2f3a4b5c6d"
CLIENT = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
SECRET = "Qx8~abcDEF.ghiJKL_mnoPQR-stuVWX0123yz"


@pytest.fixture
def entra(tmp_path):
    fake = FakeEntra(make_test_ca(tmp_path / "entra-ca", "fake Entra CA"), TENANT, CLIENT,
                     SECRET, USER)
    fake.ca_file = str(tmp_path / "entra-ca" / "ca.pem")
    yield fake
    fake.close()


@pytest.fixture
def dovecot(entra):
    require(dovecot_available(), "Dovecot 2.3 (dovecot-imapd, dovecot-pop3d), run as root")
    server = Dovecot({USER: PASSWORD}, oauth_introspection=f"{entra.url}/introspect",
                     oauth_ca=entra.ca_file)
    yield server
    server.cleanup()


@pytest.fixture
def trust_entra(entra, monkeypatch):
    """msal's own HTTP client (requests) trusting the fake's CA, as an admin would set it for
    a private proxy: the standard REQUESTS_CA_BUNDLE."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", entra.ca_file)


def oauth_sources(dovecot, entra, secret_file, **more) -> list[dict]:
    oauth = {"tenant_id": TENANT, "client_id": CLIENT, "client_secret_file": str(secret_file),
             "authority": entra.url}
    common = {"box": BOX, "host": "127.0.0.1", "tls": "none", "user": USER, "oauth": oauth,
              **more}
    return [{"kind": "imap", "port": dovecot.ports["imap"], **common},
            {"kind": "pop3", "port": dovecot.ports["pop3"], **common}]


def test_imap_and_pop3_log_in_with_an_entra_token(dovecot, entra, trust_entra, engine, db_url,
                                                  tmp_path, capfd):
    (tmp_path / "app.secret").write_text(SECRET + "\n")
    sent = [make_mail(subject=f"m365 {i}") for i in range(4)]
    for raw in sent[:2]:
        dovecot.drop(USER, raw)
    cfg = write_config(tmp_path / "sink.toml", db_url,
                       oauth_sources(dovecot, entra, tmp_path / "app.secret"))
    code, lines = run_poll(cfg, "--source", "0")
    assert code == 0, (lines, dovecot.log_tail())
    assert lines[0]["stored"] == 2 and dovecot.files(USER) == []
    for raw in sent[2:]:
        dovecot.drop(USER, raw)
    code, lines = run_poll(cfg, "--source", "1")
    assert code == 0 and lines[0]["kind"] == "pop3" and lines[0]["stored"] == 2, lines
    assert sorted(stored_raws(engine)) == sorted(sent)
    log = dovecot.log_path.read_text()
    assert "imap-login: Info: Login: user=<crm@firma.cz>, method=XOAUTH2" in log
    assert "pop3-login: Info: Login: user=<crm@firma.cz>, method=XOAUTH2" in log
    assert entra.introspections >= 2 and entra.refused == 0
    out, err = capfd.readouterr()
    assert SECRET not in out + err and not any(t in out + err for t in entra.tokens)


def test_token_cached_and_renewed_before_expiry(entra, tmp_path):
    (tmp_path / "s").write_text(SECRET)
    config = parse_config({"boxes": [{"address": BOX}], "sources": [
        {"kind": "imap", "box": BOX, "host": "h", "user": USER, "oauth": {
            "tenant_id": TENANT, "client_id": CLIENT, "client_secret_file": "s",
            "authority": entra.url}}]}, base=tmp_path)
    session = requests.Session()
    session.trust_env = False        # REQUESTS_CA_BUNDLE in the environment would win
    session.verify = entra.ca_file
    tokens = TokenSource(config.sources[0].oauth, http_client=session)
    first = tokens.token()
    assert tokens.token() == first and entra.token_requests == 1      # from msal's cache
    entra.expires_in = 120          # under msal's five-minute margin: renewed every time
    tokens = TokenSource(config.sources[0].oauth, http_client=session)
    a, b = tokens.token(), tokens.token()
    assert a != b and entra.token_requests == 3


@pytest.mark.parametrize("expired", [False, True])
def test_refused_secret_is_a_clear_error_and_no_login_storm(dovecot, entra, trust_entra, engine,
                                                            db_url, tmp_path, expired, capfd):
    dovecot.drop(USER, make_mail())
    if expired:
        (tmp_path / "app.secret").write_text(SECRET)
        entra.secret_expired = True
    else:
        (tmp_path / "app.secret").write_text("wrong~Secret.Value-99")
    cfg = write_config(tmp_path / "sink.toml", db_url,
                       oauth_sources(dovecot, entra, tmp_path / "app.secret"))
    code, lines = run_poll(cfg)
    assert code == 1
    code_text = "AADSTS7000222" if expired else "AADSTS7000215"
    for line in lines:
        assert line["errors"][0].startswith("TokenRefused: token refused by Entra ID: "
                                            f"invalid_client: {code_text}"), line
        assert "Trace ID" not in line["errors"][0]            # one line, no Entra noise
    out, err = capfd.readouterr()
    assert "wrong~Secret" not in out + err and SECRET not in out + err
    assert "Login:" not in dovecot.log_path.read_text()        # Dovecot never even asked
    assert len(dovecot.files(USER)) == 1 and message_count(engine) == 0

    # inside serve: the poller waits the whole interval after a refusal, not a backoff step
    from sink.sources.poller import Poller, make_worker, token_sources
    from sink.config import load_config
    config = load_config(cfg)
    before = entra.token_requests

    async def two_steps():
        worker = make_worker(config.sources[0], config, None, engine,
                             token_sources(config)[config.sources[0].oauth])
        poller = Poller(worker, clock=lambda: datetime(2026, 12, 1, 12))
        delays = [await poller.step(), await poller.step()]
        worker.shutdown()
        return delays, poller.last_error
    delays, last_error = asyncio.run(two_steps())
    assert delays == [300, 300] and entra.token_requests - before == 2
    assert last_error.startswith("TokenRefused:")
