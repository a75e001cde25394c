"""huey on the benchmark's Redis: RedisHuey with results off, its blocking pop (the default).

Results are off because nothing reads one (the jobs report through Redis themselves, see
bench.jobs). The consumer's worker type and count are set on the command line.
"""

from __future__ import annotations

from huey import RedisHuey

from bench import jobs

huey = RedisHuey("bench", url=jobs.redis_url(), results=False)

noop = huey.task(name="noop")(jobs.noop)
io_wait = huey.task(name="io_wait")(jobs.io_wait)
stamp = huey.task(name="stamp")(jobs.stamp)
