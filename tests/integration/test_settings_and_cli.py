"""Settings validation and the database command, run as users run them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration


def run(args, env_overrides, cwd=PROJECT_ROOT):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "REDIS_"))}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


def test_invalid_setting_is_one_line_naming_the_variable():
    result = run(["-m", "scripts.database", "init"], {"POSTGRES_PORT": "not-a-port"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "POSTGRES_PORT" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_database_is_one_line(tmp_path):
    from tests.support.services import free_port

    result = run(
        ["-m", "scripts.database", "init"], {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(free_port())}
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot connect to PostgreSQL at 127.0.0.1:")
    assert result.stderr.strip().count("\n") == 0


def test_init_creates_database_and_is_idempotent(postgres_server):
    env = {
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(postgres_server.port),
        "POSTGRES_DB": "cfr_cli_init",
    }
    first = run(["-m", "scripts.database", "init"], env)
    assert first.returncode == 0, first.stderr
    assert "(created)" in first.stdout
    second = run(["-m", "scripts.database", "init"], env)
    assert second.returncode == 0, second.stderr
    assert "(created)" not in second.stdout


def test_init_without_rights_changes_nothing(postgres_server):
    admin = postgres_server.connect("postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("CREATE ROLE cfr_reader LOGIN")
        cur.execute("CREATE DATABASE cfr_locked")
    admin.close()
    locked = postgres_server.connect("cfr_locked")
    locked.autocommit = True
    with locked.cursor() as cur:
        cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    env = {
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(postgres_server.port),
        "POSTGRES_DB": "cfr_locked",
        "POSTGRES_USER": "cfr_reader",
    }
    result = run(["-m", "scripts.database", "init"], env)
    assert result.returncode == 1
    assert "more rights" in result.stderr and "nothing was changed" in result.stderr
    with locked.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public'"
        )
        assert cur.fetchone()[0] == 0
    locked.close()
