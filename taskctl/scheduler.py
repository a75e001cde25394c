"""The rq-scheduler process, configured from taskctl's settings.

rq-scheduler has no serializer option; given taskctl's job and queue classes it
stores and enqueues JSON jobs that only run catalog functions, like every other
path into Redis. Run it as ``python -m taskctl.scheduler``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rq_scheduler import Scheduler

from taskctl.connection import REDIS_DOWN_ERRORS, get_redis
from taskctl.rqclasses import CatalogJob, Queue
from taskctl.settings import Settings, get_settings


def make_scheduler(settings: Settings | None = None) -> Scheduler:
    settings = settings or get_settings()
    return Scheduler(
        connection=get_redis(settings),
        interval=settings.scheduler_interval,
        job_class=CatalogJob,
        queue_class=Queue,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskctl.scheduler", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="enqueue what is due, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s scheduler %(levelname)s %(message)s")
    settings = get_settings()
    scheduler = make_scheduler(settings)
    logging.info("rq-scheduler on %s, checking every %gs", settings.redis_url_masked, settings.scheduler_interval)
    try:
        scheduler.run(burst=args.burst)
    except REDIS_DOWN_ERRORS as exc:
        logging.error("cannot reach Redis at %s: %s", settings.redis_url_masked, exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
