"""Shared by the reliability tests: the figures each test reports, and a seeded database."""

from __future__ import annotations

import json
import os
import time

import pytest


FIGURES_ENV = "SINK_RELIABILITY_FIGURES"


@pytest.fixture
def figures(request):
    """``figures(**numbers)`` records what a run did (messages, kills, lost, duplicated, ...):
    printed on the terminal and, with $SINK_RELIABILITY_FIGURES=FILE, appended to FILE as one
    JSON line (docs/RELIABILITY.md quotes the last run)."""
    recorded = {}

    def report(**numbers):
        recorded.update(numbers)
    yield report
    if not recorded:
        return
    line = {"test": request.node.nodeid, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **recorded}
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        terminal.write_line(f"RELIABILITY {json.dumps(line)}")
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


@pytest.fixture
def private_pg():
    """``private_pg(settings={...})`` -> a started PrivateCluster, destroyed after the test."""
    from tests.reliability import pgcluster
    from tests.support import free_port, require
    require(pgcluster.available(), "root and Debian's PostgreSQL binaries (a private cluster)")
    clusters = []

    def make(settings=None):
        cluster = pgcluster.PrivateCluster(free_port(), settings=settings)
        clusters.append(cluster)
        cluster.start()
        return cluster
    yield make
    for cluster in clusters:
        cluster.destroy()
