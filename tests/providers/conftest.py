"""Provider tests run against a moto server on loopback."""

from __future__ import annotations

from tests.moto_server import moto_endpoint as moto_endpoint
