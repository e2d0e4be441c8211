"""Reliability tests (issue "Proven: nothing lost, nothing twice"): crashes, outages, hostile
input. docs/RELIABILITY.md says what each one proves and how to reproduce it."""
