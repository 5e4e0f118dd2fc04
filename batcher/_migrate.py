"""The schema: ``batcher db upgrade``, and the check every first use makes.

``upgrade`` creates the Postgres database if it is missing, then runs the Alembic migrations, under a
Postgres advisory lock so that concurrent upgrades (two workers starting, a client's first use beside
``batcher db upgrade``) run one after the other instead of racing.

``ensure_schema`` is what a cluster client and ``batcher worker`` call before touching the database,
once per database per process: it reads the schema's revision (one query) and, when the database is
missing or behind, migrates it if ``BATCHER_AUTO_MIGRATE`` (default on) allows — or raises one
``ConfigurationError`` line naming what to run. A database migrated by a newer batcher, a role that may
not create or migrate, a wrong password, an unknown role: each is one line with its fix
(``batcher._db.engine.database_problem``), never the driver's traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, create_engine, make_url, pool, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, ProgrammingError, SQLAlchemyError

from batcher._config import Settings
from batcher._db.engine import database_problem, first_line, where
from batcher._exceptions import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config

REPO_ROOT = Path(__file__).resolve().parent.parent
VERSIONS = REPO_ROOT / "alembic" / "versions"

MIGRATION_LOCK_ID = 0x6261746368657223
"""``b"batcher#"`` as a 64-bit integer: the advisory lock held while migrating (the leader's is ``batcher!``)."""

log = logging.getLogger("batcher.migrate")

# Alembic announces each of its plugins at INFO on every run; only the migrations themselves are news.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

_INSUFFICIENT_PRIVILEGE = "42501"
_DUPLICATE_DATABASE = "42P04"


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    ini = REPO_ROOT / "alembic.ini"
    if not ini.exists():
        raise ConfigurationError(
            f"alembic.ini not found at {ini}: run migrations from a checkout of batcher (pip install -e .)"
        )
    config = Config(str(ini))
    config.set_main_option("script_location", str(REPO_ROOT / "alembic"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


# --- what this code knows ----------------------------------------------------------------------

_REVISION = re.compile(r"^revision(?:\s*:[^=]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN = re.compile(r"^down_revision(?:\s*:[^=]*)?=\s*(?:['\"]([^'\"]+)['\"]|None)", re.MULTILINE)


@functools.cache
def known_revisions() -> tuple[frozenset[str], str | None]:
    """Every revision in ``alembic/versions`` and the head (None if there is not exactly one).

    Read from the files' ``revision`` / ``down_revision`` lines, without importing Alembic (a first use
    that finds the database current pays for no more than one query)."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for path in VERSIONS.glob("*.py"):
        source = path.read_text("utf-8")
        if (revision := _REVISION.search(source)) is None:
            continue
        revisions.add(revision[1])
        if (down := _DOWN.search(source)) is not None and down[1]:
            downs.add(down[1])
    heads = revisions - downs
    return frozenset(revisions), next(iter(heads)) if len(heads) == 1 else None


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at; None when it was never migrated (no ``alembic_version``)."""
    try:
        row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    except ProgrammingError as exc:
        if getattr(exc.orig, "sqlstate", None) != "42P01":  # undefined table: never migrated
            raise
        conn.rollback()
        return None
    return None if row is None else str(row[0])


# --- creating and migrating --------------------------------------------------------------------


def _postgres(url: URL) -> bool:
    return url.get_backend_name().startswith("postgresql")


def create_database_if_missing(url: URL) -> bool:
    """Create the Postgres database named in ``url``; True if this call created it.

    Another process creating it at the same moment is not an error. A role that may not create
    databases gets one line saying what to ask for."""
    if not _postgres(url) or not url.database:
        return False
    last: SQLAlchemyError | None = None
    for admin_db in ("postgres", "template1"):  # a server may have no ``postgres`` database
        admin = create_engine(url.set(database=admin_db), isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
        try:
            with admin.connect() as conn:
                exists = conn.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
                ).first()
                if exists:
                    return False
                quoted = conn.dialect.identifier_preparer.quote(url.database)
                try:
                    conn.execute(text(f"CREATE DATABASE {quoted}"))
                except DBAPIError as exc:
                    state = getattr(exc.orig, "sqlstate", None)
                    if state == _DUPLICATE_DATABASE or "already exists" in str(exc.orig):
                        return False  # a concurrent first use made it
                    if state == _INSUFFICIENT_PRIVILEGE:
                        user = url.username or "(default)"
                        raise ConfigurationError(
                            f"BATCHER_DATABASE_URL ({where(url)}): database {url.database!r} does not exist and "
                            f"role {user!r} may not create it: create it as a superuser (createdb -O {user} "
                            f"{url.database}), then run 'batcher db upgrade'"
                        ) from None
                    raise
                log.debug("created database %s", where(url))
                return True
        except DBAPIError as exc:
            if re.search(r'database "[^"]*" does not exist', first_line(exc)):
                last = exc  # no such admin database: try the next one
                continue
            raise database_problem(exc, url) from None
        finally:
            admin.dispose()
    assert last is not None
    raise database_problem(last, url) from None


@contextlib.contextmanager
def migration_lock(url: URL) -> Iterator[None]:
    """Hold the migration advisory lock of the database for the block (Postgres; nothing elsewhere)."""
    if not _postgres(url):
        yield
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text(f"SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))
            conn.commit()
            try:
                yield
            finally:
                with contextlib.suppress(SQLAlchemyError):  # the session's end releases it anyway
                    conn.execute(text(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})"))
                    conn.commit()
    except DBAPIError as exc:
        raise database_problem(exc, url) from None
    finally:
        engine.dispose()


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Create the database if missing and migrate it to ``revision``, one migrator at a time."""
    from alembic import command  # imported late: importing it logs its plugins (silenced above)

    url = make_url(settings.database_url)
    create_database_if_missing(url)
    with migration_lock(url):
        try:
            command.upgrade(alembic_config(settings.database_url), revision)
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == _INSUFFICIENT_PRIVILEGE:
                raise ConfigurationError(
                    f"BATCHER_DATABASE_URL ({where(url)}): role {url.username or '(default)'!r} may not migrate "
                    f"the database ({first_line(exc)}): run 'batcher db upgrade' as its owner"
                ) from None
            raise database_problem(exc, url) from None
    _ready.add(settings.database_url)


def downgrade(settings: Settings, revision: str) -> None:
    from alembic import command

    url = make_url(settings.database_url)
    with migration_lock(url):
        command.downgrade(alembic_config(settings.database_url), revision)
    _ready.discard(settings.database_url)


# --- first use ---------------------------------------------------------------------------------

_ready: set[str] = set()
"""Database URLs found (or made) current by this process: each is checked once."""
_ready_lock = threading.Lock()


def ensure_schema(settings: Settings) -> None:
    """Make sure the cluster's database exists and is at this code's head revision, once per process.

    Missing or behind: migrated here if ``settings.auto_migrate``, else ``ConfigurationError`` naming
    ``batcher db upgrade``. Ahead (a newer batcher migrated it) or any connection mistake: one line.
    """
    url = make_url(settings.database_url)
    if not _postgres(url) or settings.database_url in _ready:
        return
    with _ready_lock:
        if settings.database_url in _ready:
            return
        revisions, head = known_revisions()
        current = _read_revision(url, settings.auto_migrate)
        if current == "missing":
            _quietly_upgrade(settings, f"created database {where(url)} and migrated it to {head}")
            return
        if current is not None and current not in revisions:
            raise ConfigurationError(
                f"BATCHER_DATABASE_URL ({where(url)}): the database is at revision {current}, which this batcher "
                f"does not know (its newest is {head}): a newer batcher migrated it; run that version here too"
            )
        if head is None or current == head:
            _ready.add(settings.database_url)
            return
        if not settings.auto_migrate:
            raise ConfigurationError(
                f"BATCHER_DATABASE_URL ({where(url)}): the database is at revision {current or 'none'}, batcher "
                f"needs {head}: run 'batcher db upgrade'"
            )
        _quietly_upgrade(settings, f"migrated database {where(url)} from {current or 'nothing'} to {head}")


def _quietly_upgrade(settings: Settings, done: str) -> None:
    """A first use's migration: one INFO line when it is done, not Alembic's line per revision."""
    chatty = logging.getLogger("alembic.runtime.migration")
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        upgrade(settings)
    finally:
        chatty.setLevel(level)
    log.info("%s (first use; BATCHER_AUTO_MIGRATE=false leaves it to 'batcher db upgrade')", done)


def _read_revision(url: URL, may_create: bool) -> str | None:
    """The database's revision, None if never migrated, ``"missing"`` if the database does not exist
    and we may create it."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return current_revision(conn)
    except DBAPIError as exc:
        problem = database_problem(exc, url)
        if may_create and re.search(r'database "[^"]*" does not exist', first_line(exc)):
            return "missing"
        raise problem from None
    finally:
        engine.dispose()
