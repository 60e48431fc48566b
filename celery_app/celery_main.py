"""The Celery app. Start workers per exchange queue or for all of them (without -Q a worker takes
every queue of `celery_config.task_queues`: one per exchange of `common.exchanges`):

celery -A celery_app.celery_main worker -Q bitfinex_rest --concurrency 1
celery -A celery_app.celery_main worker
"""

from __future__ import annotations

from celery import Celery
from celery.signals import setup_logging as celery_setup_logging

from common.logging_setup import setup_logging
from common.settings import get_settings


@celery_setup_logging.connect
def _one_logging_setup(**_) -> None:
    """Celery adds its own root handler unless someone answers this signal; ours writes every line
    once, in the project's format, to stderr and logs/celery_worker.log."""
    setup_logging("celery_worker")


def create_app() -> Celery:
    settings = get_settings()
    app = Celery(
        "coin_for_rich",
        broker=settings.redis_url,
        backend=settings.redis_url,
        include=["celery_app.celery_tasks"],
    )
    app.config_from_object("celery_app.celery_config")
    return app


app = create_app()
