"""A job's timeout in the in-process worker: RQ's SIGALRM death penalty, for a fraction of its cost.

RQ's ``UnixSignalDeathPenalty`` installs its SIGALRM handler before each job and
puts the default back after it: two ``sigaction`` system calls per job on top of
the two ``alarm`` calls, each through ``signal.signal``'s conversion of the old
handler into an enum (a raised and caught ValueError for a Python handler). A
busy worker on short jobs spent about 4% of its time there. Here the handler
is installed once per process and stays; each job only arms and disarms the
alarm. The handler raises only while a job's penalty is armed: an alarm that
arrives with none (there is none, ``alarm(0)`` cancels it) is ignored, where
RQ's default would have ended the process.

A job that installs a SIGALRM handler of its own replaces this one: the next
job's penalty installs it again (one look at the handler per job, which costs no
system call).
"""

from __future__ import annotations

# The C functions behind signal.signal and signal.getsignal, without their enum conversions.
import _signal
import signal
from types import FrameType
from typing import Any

from rq.timeouts import UnixSignalDeathPenalty


class AlarmDeathPenalty(UnixSignalDeathPenalty):
    """RQ's death penalty (same exception, same message), with its handler installed once per process."""

    #: The penalty armed now, whose exception an alarm raises; None between jobs.
    _armed: AlarmDeathPenalty | None = None

    def setup_death_penalty(self) -> None:
        if _signal.getsignal(signal.SIGALRM) is not _on_alarm:
            _signal.signal(signal.SIGALRM, _on_alarm)
        AlarmDeathPenalty._armed = self
        signal.alarm(self._timeout)

    def cancel_death_penalty(self) -> None:
        signal.alarm(0)
        AlarmDeathPenalty._armed = None


def _on_alarm(signum: int, frame: FrameType | None) -> Any:
    armed = AlarmDeathPenalty._armed
    if armed is not None:
        armed.handle_death_penalty(signum, frame)  # type: ignore[no-untyped-call]
