"""deploy/: the systemd unit and the Prometheus files name what exists."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.support import require

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
# SPEC section 7's names, and what a histogram and Prometheus itself add
SPEC_METRICS = {"sink_messages_total", "sink_replies_total", "sink_reply_seconds",
                "sink_source_last_success_timestamp_seconds", "sink_messages_failed",
                "sink_messages_pending", "sink_worker_restarts_total", "sink_suspended"}
KNOWN = SPEC_METRICS | {f"sink_reply_seconds_{s}" for s in ("bucket", "sum", "count")} | {"up"}


def rules() -> list[dict]:
    document = yaml.safe_load((PROMETHEUS / "sink-alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_alert_rules_are_yaml_naming_existing_metrics():
    found = rules()
    names = {rule["alert"] for rule in found}
    assert {"SinkMessagesFailed", "SinkStorageDeferring", "SinkSourceSilent"} <= names
    functions = {"max", "sum", "rate", "increase", "time", "without", "by", "and", "instance"}
    for rule in found:
        used = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b(?=\s*[{\[(]|\s*[><=!]|\s*$|\s*\))",
                              rule["expr"]))
        metrics = {u for u in used if u.startswith("sink_") or u == "up"}
        assert metrics, rule["alert"]
        assert metrics <= KNOWN, (rule["alert"], metrics - KNOWN)
        assert not (used - metrics - functions - {"code", "job", "source"}), used
    silent = next(r for r in found if r["alert"] == "SinkSourceSilent")
    assert "sink_source_last_success_timestamp_seconds" in silent["expr"]
    assert "3 *" in silent["expr"]


def test_the_metrics_module_exports_exactly_the_spec_names():
    import sink.metrics as m
    text = Path(m.__file__).read_text()
    for name in SPEC_METRICS:
        base = name.removesuffix("_total")
        assert f'"{base}"' in text, name


def test_promtool_accepts_the_rules_and_the_scrape_config():
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool (Debian package prometheus)")
    for args in (["check", "rules", str(PROMETHEUS / "sink-alerts.yml")],
                 ["check", "config", str(PROMETHEUS / "prometheus.yml")]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_systemd_unit_runs_serve_as_a_user_restarts_and_is_hardened():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(ROOT / "deploy" / "systemd" / "sink.service")
    service = unit["Service"]
    assert service["User"] == "sink"
    assert service["ExecStart"].endswith("/bin/sink serve")
    assert service["ExecStartPre"].endswith("/bin/sink db upgrade")
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM" and int(service["TimeoutStopSec"]) > 60
    for key, expected in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                          ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                          ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
                          ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
                          ("RestartPreventExitStatus", "2")):
        assert service[key] == expected, key
    # the directories the documented set-up writes to: state, log, an emldir source
    import tomllib
    sources = tomllib.loads((ROOT / "deploy" / "sources.example.toml").read_text())
    emldirs = [s["path"] for s in sources.get("sources", []) if s.get("kind") == "emldir"]
    writable = service["ReadWritePaths"].replace("-", "").split()
    assert emldirs and all(any(d.startswith(w) for w in writable) for d in emldirs), emldirs
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_every_toml_example_of_the_documentation_parses():
    """An admin pastes these: the README's Microsoft 365 source spread an inline table over
    three lines, which TOML refuses (found in review)."""
    import re
    import textwrap
    import tomllib
    documents = [ROOT / "README.md", *sorted((ROOT / "deploy").rglob("*.md")),
                 *sorted((ROOT / "docs").glob("*.md"))]
    blocks = 0
    for document in documents:
        for block in re.findall(r"^([ \t]*)```toml\n(.*?)^\1```", document.read_text(),
                                re.S | re.M):
            try:
                tomllib.loads(textwrap.dedent(block[1]))
            except tomllib.TOMLDecodeError as error:
                raise AssertionError(f"{document.name}: {error}\n{block[1]}") from None
            blocks += 1
    assert blocks >= 8, blocks
