"""Registers the "parrot" provider of ``tests/integration/test_provider_plugin.py`` (and its fake format):
loaded into a test worker with ``--include=tests.support.parrot_provider``, as a package of your own
registers its provider at import."""

from __future__ import annotations

from batcher.providers import register_provider
from batcher.testing import register_format
from tests.integration.test_provider_plugin import ParrotAdapter, ParrotFormat

register_provider(ParrotAdapter())
register_format(ParrotFormat())
