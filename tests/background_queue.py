"""The test session's background queue (issue 23): long one-thread chains run one after another
in a worker thread beside the foreground tests, timed, so the terminal summary can say how long
each job ran and how long the tests waited for it."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor


class BackgroundQueue:
    """Named jobs run in submission order by one worker thread; times are seconds since the queue
    was made."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="background")
        self._start = time.monotonic()
        self.futures = {}
        self.ran: dict[str, tuple[float, float]] = {}  # name -> (started, ended)
        self.waits: dict[str, tuple[str, float, float]] = {}  # name -> (waiter, asked at, seconds waited)

    def _now(self) -> float:
        return time.monotonic() - self._start

    def submit(self, name: str, job) -> None:
        def timed():
            started = self._now()
            try:
                return job()
            finally:
                self.ran[name] = (started, self._now())

        self.futures[name] = self._pool.submit(timed)

    def result(self, name: str, waiter: str):
        """Job `name`'s return value (its exception re-raised), blocking until it is done."""
        asked = self._now()
        try:
            return self.futures[name].result()
        finally:
            self.waits[name] = (waiter, asked, self._now() - asked)

    def close(self) -> None:
        """Waits for the job that is running; jobs not started yet never start (a session
        stopped early by -x or Ctrl-C should not wait for them)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def summary(self) -> list[str]:
        """One line per job: how long it ran, and how long its consumer waited for it."""
        lines = []
        for name, future in self.futures.items():
            if name in self.ran:
                started, ended = self.ran[name]
                outcome = "failed" if future.done() and future.exception() else "ran"
                line = f"{name}: {outcome} {ended - started:.0f} s (+{started:.0f} s to +{ended:.0f} s)"
            else:
                line = f"{name}: never started"
            if name in self.waits:
                waiter, asked, waited = self.waits[name]
                line += f"; {waiter} waited {waited:.0f} s for it (from +{asked:.0f} s)"
            else:
                line += "; nothing waited for it"
            lines.append(line)
        return lines


def consumers_last(items: list, job_users: list[set]) -> list:
    """`items` (each with .nodeid and .fixturenames) with the modules whose tests use a job's
    fixtures (job_users, in queue order) moved to the end, in the order of the first job each
    uses; whole modules move, so a module-scoped fixture is still set up once."""
    none = len(job_users)
    first_job: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        used = [k for k, users in enumerate(job_users) if users & set(item.fixturenames)]
        first_job[module] = min(first_job.get(module, none), *used, none)
    order = {module: -1 if job == none else job for module, job in first_job.items()}  # -1: stays in front
    return sorted(items, key=lambda item: order[item.nodeid.split("::")[0]])  # stable: same rank keeps its order
