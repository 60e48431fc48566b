"""Apply the SQL in scripts/database/init/ — idempotently and all-or-nothing — and fill the summaries.

The same files serve both database paths, because every TimescaleDB-specific statement is guarded
by a check for the extension; they read the summary levels from `ohlcv_aggregate_levels`, which
init writes from `common.levels` first. Before any of them runs, the server is probed: TimescaleDB
installed but not preloaded is refused with one line saying how to enable it (creating the
extension there ends the session with a FATAL error), and a database initialised plain stays plain,
so guessing would leave the wrong kind behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from common.db import DatabaseError, connect, error_line, has_timescaledb, refresh_aggregates
from common.levels import SUMMARY_LEVELS
from common.settings import PROJECT_ROOT, Settings

INIT_SQL_DIR = PROJECT_ROOT / "scripts" / "database" / "init"

ENABLE_TIMESCALEDB = (
    "add timescaledb to shared_preload_libraries in postgresql.conf, restart PostgreSQL and run init "
    "again (or run init --plain to use plain PostgreSQL tables instead)"
)


def init_sql_files(directory: Path = INIT_SQL_DIR) -> list[Path]:
    return sorted(directory.glob("*.sql"))


@dataclass(frozen=True, slots=True)
class TimescaleProbe:
    """What the server says about TimescaleDB before init touches anything."""

    available: bool  # the package is installed on the server (pg_available_extensions)
    installed: bool  # the extension exists in this database (pg_extension)
    preload: str | None  # shared_preload_libraries, None when this user may not read it
    switched_off: bool = False  # coin_for_rich.use_timescaledb = off (server, database or role setting)


def preload_includes_timescaledb(preload: str) -> bool:
    """Whether a shared_preload_libraries value loads TimescaleDB (plain, quoted, $libdir/…, .so)."""
    for entry in preload.split(","):
        name = entry.strip().strip('"').strip().rsplit("/", 1)[-1]
        if name.removesuffix(".so") == "timescaledb":
            return True
    return False


def use_timescaledb(probe: TimescaleProbe, plain: bool) -> bool:
    """The path init takes; a `DatabaseError` when neither can work as asked.

    TimescaleDB when the server has it and preloads it; plain PostgreSQL when it has no TimescaleDB
    or plain is asked for (`--plain`, or the setting `coin_for_rich.use_timescaledb = off` on the
    server, database or role). Installed but not preloaded is refused rather than quietly made plain: a
    plain database cannot later become a TimescaleDB one. An unreadable setting is tried (a
    lost connection then becomes a one-line error naming the likely cause).
    """
    if plain or probe.switched_off:
        if probe.installed:
            raise DatabaseError(
                "this database already uses TimescaleDB; --plain applies only to a database "
                "initialised without it"
            )
        return False
    if not probe.available and not probe.installed:
        return False
    if probe.preload is not None and not preload_includes_timescaledb(probe.preload):
        raise DatabaseError(f"TimescaleDB is installed on the server but not preloaded: {ENABLE_TIMESCALEDB}")
    return True


def probe_timescaledb(conn) -> TimescaleProbe:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'), "
            "EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'), "
            "current_setting('coin_for_rich.use_timescaledb', true) = 'off'"
        )
        available, installed, switched_off = cur.fetchone()
        cur.execute("SAVEPOINT probe")
        try:
            cur.execute("SELECT current_setting('shared_preload_libraries')")
            preload = cur.fetchone()[0]
        except psycopg2.errors.InsufficientPrivilege:
            cur.execute("ROLLBACK TO SAVEPOINT probe")
            preload = None
        cur.execute("RELEASE SAVEPOINT probe")
    return TimescaleProbe(bool(available), bool(installed), preload, bool(switched_off))


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
    except psycopg2.Error as error:
        raise DatabaseError(
            f"creating database {settings.postgres_db!r} failed: {error_line(error)}"
        ) from None
    finally:
        admin.close()
    return True


def drop_database(settings: Settings) -> None:
    admin = connect(settings, dbname="postgres")
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(settings.postgres_db)))
    finally:
        admin.close()


_LEVELS_TABLE = """
CREATE TABLE IF NOT EXISTS ohlcv_aggregate_levels (
    name    text     PRIMARY KEY,
    width   interval NOT NULL UNIQUE,
    source  text     NOT NULL,
    ordinal integer  NOT NULL UNIQUE
);
-- Start of the earliest materialised bucket that was still open at the last refresh (plain path):
-- rows written into it later (live updates, anyone's INSERT) are picked up by the next refresh.
ALTER TABLE ohlcv_aggregate_levels ADD COLUMN IF NOT EXISTS open_from timestamptz;
ALTER TABLE ohlcv_aggregate_levels ADD COLUMN IF NOT EXISTS timescale_view_of text;
UPDATE ohlcv_aggregate_levels SET ordinal = -ordinal;
"""
_UPSERT_LEVEL = """
INSERT INTO ohlcv_aggregate_levels (name, width, source, ordinal, timescale_view_of)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE SET width = EXCLUDED.width, source = EXCLUDED.source,
    ordinal = EXCLUDED.ordinal, timescale_view_of = EXCLUDED.timescale_view_of
"""


def write_summary_levels(cur) -> None:
    """Write `common.levels.SUMMARY_LEVELS` into `ohlcv_aggregate_levels`, which the init SQL reads
    to build each level on either database path (the one declaration of the levels). Ordinals are
    renumbered; a level no longer declared leaves the table (its relation is left to the user)."""
    cur.execute(_LEVELS_TABLE)
    for ordinal, level in enumerate(SUMMARY_LEVELS, start=1):
        cur.execute(
            _UPSERT_LEVEL, (level.relation, level.width, level.plain_source, ordinal, level.timescale_view_of)
        )
    cur.execute("DELETE FROM ohlcv_aggregate_levels WHERE ordinal < 0")


def apply_schema(settings: Settings, plain: bool = False, directory: Path = INIT_SQL_DIR) -> bool:
    """Run every init file in one transaction; returns whether TimescaleDB is in use.

    Any failure rolls everything back and is raised as a one-line `DatabaseError`; so is a
    connection the server closed. `plain` keeps plain PostgreSQL where TimescaleDB is installed.
    """
    conn = connect(settings)
    path_name = "the TimescaleDB check"
    try:
        with conn.cursor() as cur:
            timescale = use_timescaledb(probe_timescaledb(conn), plain)
            if not timescale:
                cur.execute("SELECT set_config('coin_for_rich.use_timescaledb', 'off', true)")
            cur.execute(
                "SELECT set_config('coin_for_rich.compress_after_days', %s, true)",
                (str(settings.timescaledb_compress_after_days),),
            )
            path_name = "the summary levels"
            write_summary_levels(cur)
            for path in init_sql_files(directory):
                path_name = path.name
                cur.execute(path.read_text())
        conn.commit()
        return has_timescaledb(conn)
    except psycopg2.Error as error:
        if conn.closed:
            raise DatabaseError(
                f"the server closed the connection during schema init ({path_name}: {error_line(error)}); "
                "nothing was changed; if the server log says timescaledb must be preloaded: "
                + ENABLE_TIMESCALEDB
            ) from None
        conn.rollback()
        if isinstance(error, psycopg2.errors.InsufficientPrivilege):
            raise DatabaseError(
                f"schema init needs more rights than user {settings.postgres_user!r} has "
                f"({path_name}: {error_line(error)}); nothing was changed"
            ) from None
        raise DatabaseError(
            f"schema init failed in {path_name}: {error_line(error)}; nothing was changed"
        ) from None
    finally:
        conn.close()


def materialise_existing_rows(settings: Settings, timescale: bool) -> None:
    """Fill the summaries from rows that were in `ohlcvs` before init.

    TimescaleDB's continuous aggregates are created WITH NO DATA: without this, old rows show only
    through real-time aggregation until a later refresh moves the watermark past them, and then not at
    all. Refreshing everything is cheap where nothing changed, so it always runs there. The plain
    tables are filled when one of them is empty (new, or a level just added) and `ohlcvs` is not.
    """
    if not timescale:
        conn = connect(settings)
        try:
            with conn.cursor() as cur:
                empty = sql.SQL(" OR ").join(
                    sql.SQL("NOT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(level.relation))
                    for level in SUMMARY_LEVELS
                )
                cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM ohlcvs) AND ({})").format(empty))
                if not cur.fetchone()[0]:
                    return
        except psycopg2.Error as error:
            raise DatabaseError(f"checking for rows to summarise failed: {error_line(error)}") from None
        finally:
            conn.close()
    refresh_aggregates(settings, None, None)


@dataclass(frozen=True, slots=True)
class InitResult:
    created: bool
    timescale: bool


def init_database(settings: Settings, plain: bool = False, directory: Path = INIT_SQL_DIR) -> InitResult:
    """What `python -m scripts.database init` does: create the database if needed, apply the schema,
    materialise existing rows. A database this call created is dropped again if the schema fails."""
    created = ensure_database(settings)
    try:
        timescale = apply_schema(settings, plain, directory)
    except DatabaseError as error:
        if created:
            try:
                drop_database(settings)
            except (DatabaseError, psycopg2.Error) as drop_error:
                raise DatabaseError(
                    f"{error}; the database {settings.postgres_db!r} created for it could not be dropped "
                    f"again: {error_line(drop_error)}"
                ) from None
        raise
    materialise_existing_rows(settings, timescale)
    return InitResult(created, timescale)
