"""A repair hands its worker to other work waiting in its exchange's queue — a user's backfill —
but not to the repair run the beat queued meanwhile, which would find the job still being drained,
leave it, and so leave it idle until the beat after. The messages are Celery's own, published to
a real Redis broker."""

from __future__ import annotations

import pytest
import redis
from celery import Celery

from celery_app.queue_messages import QUEUE_PEEK, REPAIR_TASK, other_work_waiting

pytestmark = pytest.mark.integration


def waiting(client: redis.Redis, queue: str) -> list[bytes]:
    return client.lrange(queue, 0, QUEUE_PEEK - 1)


def test_a_repair_gives_way_to_a_backfill_but_not_to_the_next_repair_run(settings):
    from celery_app.celery_config import REST_QUEUES

    client = redis.Redis.from_url(settings.redis_url)
    queue = REST_QUEUES["binance"]
    client.delete(queue)
    assert not other_work_waiting(waiting(client, queue))
    # the platform's Celery configuration on this test's Redis (`celery_main.app`, made once per
    # process, would stay bound to it for the tests after this one)
    app = Celery("coin_for_rich", broker=settings.redis_url)
    app.config_from_object("celery_app.celery_config")
    app.send_task(REPAIR_TASK, args=("binance",), queue=queue)
    app.send_task(REPAIR_TASK, args=("binance",), queue=queue)
    assert len(waiting(client, queue)) == 2
    assert not other_work_waiting(waiting(client, queue))
    app.send_task("celery_app.celery_tasks.drain_backfill_job", args=("a-user-job",), queue=queue)
    assert len(waiting(client, queue)) == 3
    assert other_work_waiting(waiting(client, queue))
    client.delete(queue)


def test_an_unreadable_message_counts_as_other_work():
    assert other_work_waiting([b"not json"])
    assert other_work_waiting([b'{"headers": {}}'])
    assert not other_work_waiting([])
