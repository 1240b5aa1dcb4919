"""Shared bits of the system tests: the harness and the fake Diga API are
imported from their folders, and each test's report is kept on its item so
that a fixture can print the box's journal when the test failed."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
for path in (HERE, os.path.join(HERE, "..", "fake-diga")):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
