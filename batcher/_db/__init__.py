"""Postgres storage: the schema (``models``), engines (``engine``) and the statements of the hot path (``store``)."""
