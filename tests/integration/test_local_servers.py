"""The platform's own PostgreSQL and Redis (`make up`): where the data goes, and why a server that
does not start failed, in one line read from its log."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from common.settings import Settings
from scripts.local import servers
from scripts.local.servers import LocalPostgres, LocalRedis, LocalServiceError
from tests.support.services import free_port

pytestmark = pytest.mark.integration


def local_settings(**values) -> Settings:
    return Settings(_env_file=None, postgres_port=free_port(), redis_port=free_port(), **values)


@pytest.fixture
def shared_dir():
    """A folder every account can enter (pytest's own temp root is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="cfr-local-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_postgres_data_goes_where_the_postgres_account_can_reach(shared_dir, monkeypatch):
    """As root PostgreSQL runs as `postgres`; a data folder inside a private one (a root home) is
    out of its reach, so the cluster goes to a folder of its own under the fallback root instead of
    failing, and `status`/`down` (a new LocalPostgres) find it there again."""
    monkeypatch.setattr(servers, "FALLBACK_ROOT", shared_dir / "fallback")
    private = Path(tempfile.mkdtemp(prefix="cfr-private-"))  # mode 0700
    data_root = private / "local_data"
    data_root.mkdir()
    settings = local_settings()
    try:
        postgres = LocalPostgres(settings, data_root)
        if os.geteuid() == 0:
            assert postgres.root.is_relative_to(shared_dir / "fallback")
        else:  # the folder's owner runs PostgreSQL itself and reaches it
            assert postgres.root == data_root / "postgres"
        postgres.start()
        again = LocalPostgres(settings, data_root)
        assert again.root == postgres.root and again.running()
        again.stop()
        assert not postgres.running()
    finally:
        LocalPostgres(settings, data_root).stop()
        shutil.rmtree(private, ignore_errors=True)


def test_postgres_that_cannot_start_says_why_in_one_line(shared_dir):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        postgres = LocalPostgres(Settings(_env_file=None, postgres_port=port), shared_dir)
        with pytest.raises(LocalServiceError) as raised:
            postgres.start()
    message = str(raised.value)
    assert "\n" not in message
    assert f"PostgreSQL on port {port} did not start" in message and "Address already in use" in message
    assert str(postgres.log_file) in message


def test_redis_that_cannot_start_says_why_in_one_line(shared_dir):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        local_redis = LocalRedis(Settings(_env_file=None, redis_port=port), shared_dir, shared_dir)
        with pytest.raises(LocalServiceError) as raised:
            local_redis.start()
    message = str(raised.value)
    assert "\n" not in message
    assert f"redis-server on port {port} did not start: the port is taken" in message
