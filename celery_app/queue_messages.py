"""What waits in an exchange's Celery queue, read from the broker's own list without the Celery
app (so it imports nothing that binds to a broker)."""

from __future__ import annotations

import json

REPAIR_TASK = "celery_app.celery_tasks.repair_gaps"
QUEUE_PEEK = 100
"""Messages of a queue looked at when deciding whether work other than a repair waits."""


def other_work_waiting(messages: list[bytes]) -> bool:
    """Whether any of a queue's waiting messages (Celery's messages as the Redis broker keeps
    them: JSON with the task's name in `headers.task`) is something other than a repair run.

    The beat queues a repair run for each exchange every `REPAIR_INTERVAL_SECONDS`; a repair that
    handed its worker to that message would hand it to a run that finds the job still being
    drained and leaves, so the job would wait for the next beat. A message that cannot be read
    counts as other work: the repair gives way."""
    for raw in messages:
        try:
            task = json.loads(raw)["headers"]["task"]
        except (ValueError, KeyError, TypeError):
            return True
        if task != REPAIR_TASK:
            return True
    return False
