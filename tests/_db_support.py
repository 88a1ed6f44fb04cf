"""The PostgreSQL server the tests use, and throwaway schemas in it.

``KERNOS_TEST_DATABASE_URL`` names the server. Without it the PostgreSQL half of every
backend-parametrised test is skipped with a visible reason (a laptop); with it, an unreachable
server fails those tests (CI). Each test (or module) gets a schema of its own, dropped after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg

PG_URL = os.environ.get("KERNOS_TEST_DATABASE_URL")
SKIP_PG = "PostgreSQL tests skipped: set KERNOS_TEST_DATABASE_URL=postgresql://... to run them"


def pg_schema_url(schema: str) -> str:
    assert PG_URL is not None
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def pg_schema(prefix: str = "kt") -> Iterator[str]:
    """A database URL whose search path is a fresh schema, dropped on exit."""
    assert PG_URL is not None
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield pg_schema_url(schema)
    finally:
        with psycopg.connect(PG_URL, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
