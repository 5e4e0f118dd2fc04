"""``batcher db upgrade``: create the database if it is missing, then run the Alembic migrations."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import URL

from batcher._config import Settings
from batcher._exceptions import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config

REPO_ROOT = Path(__file__).resolve().parent.parent

# Alembic announces each of its plugins at INFO on every run; only the migrations themselves are news.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


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


def create_database_if_missing(url: URL) -> bool:
    """Create the Postgres database named in ``url``; True if it was created."""
    if not url.get_backend_name().startswith("postgresql") or not url.database:
        return False
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
            ).first()
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(url.database)
            conn.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        admin.dispose()


def upgrade(settings: Settings, revision: str = "head") -> None:
    from alembic import command  # imported late: importing it logs its plugins (silenced above)

    url = make_url(settings.database_url)
    create_database_if_missing(url)
    command.upgrade(alembic_config(settings.database_url), revision)


def downgrade(settings: Settings, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(settings.database_url), revision)
