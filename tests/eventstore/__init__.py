"""Tests of the event store: a contract suite per interface, run on every backend."""

from __future__ import annotations

import pytest

# The contract suite lives outside test_*.py modules; let pytest rewrite its
# asserts so that failures show the compared values.
pytest.register_assert_rewrite("tests.eventstore.contract")
