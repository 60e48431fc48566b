"""Apply the SQL in scripts/database/init/ — idempotently and all-or-nothing.

The same files run unchanged in a TimescaleDB container's first start (psql) and here, because
every TimescaleDB-specific statement is guarded by a check for the extension.
"""

from __future__ import annotations

from pathlib import Path

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from common.db import DatabaseError, connect, has_timescaledb
from common.settings import PROJECT_ROOT, Settings

INIT_SQL_DIR = PROJECT_ROOT / "scripts" / "database" / "init"


def init_sql_files(directory: Path = INIT_SQL_DIR) -> list[Path]:
    return sorted(directory.glob("*.sql"))


def ensure_database(settings: Settings) -> bool:
    """Create the configured database if it does not exist; returns True if it was created."""
    try:
        conn = connect(settings)
        conn.close()
        return False
    except DatabaseError as error:
        if "does not exist" not in str(error):
            raise
    admin = connect(settings, dbname="postgres")
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.postgres_db)))
    except psycopg2.errors.InsufficientPrivilege:
        raise DatabaseError(
            f"database {settings.postgres_db!r} does not exist and user {settings.postgres_user!r} "
            "may not create it; create it as an administrator or grant CREATEDB"
        ) from None
    finally:
        admin.close()
    return True


def apply_schema(settings: Settings) -> bool:
    """Run every init file in one transaction; returns whether TimescaleDB is in use.

    Any failure rolls everything back and is raised as a one-line `DatabaseError`.
    """
    conn = connect(settings)
    try:
        with conn.cursor() as cur:
            for path in init_sql_files():
                try:
                    cur.execute(path.read_text())
                except psycopg2.errors.InsufficientPrivilege as error:
                    conn.rollback()
                    raise DatabaseError(
                        f"schema init needs more rights than user {settings.postgres_user!r} has "
                        f"({path.name}: {error.pgerror.strip().splitlines()[0]}); nothing was changed"
                    ) from None
                except psycopg2.Error as error:
                    conn.rollback()
                    message = (error.pgerror or str(error)).strip().splitlines()[0]
                    raise DatabaseError(
                        f"schema init failed in {path.name}: {message}; nothing was changed"
                    ) from None
        conn.commit()
        return has_timescaledb(conn)
    finally:
        conn.close()
