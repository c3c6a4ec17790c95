"""Independent jobs run in worker processes: spawned fresh, ended with their parent, the first failure named.

What ``fpt-peft-compare`` and the benchmarks' learning-rate sweeps share: many training runs, each a job of its own,
run a few at a time in processes that start without the parent's CUDA or thread state.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")


def exit_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when the process ``parent`` is gone (killed, not just interrupted),
    instead of finishing its job and idling as an orphan."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_jobs(
    function: Callable[[Job], Result],
    jobs: Sequence[Job],
    workers: int,
    on_done: Callable[[Job, Result], None],
    describe: Callable[[Job], str] = str,
) -> None:
    """Call ``function(job)`` for every job in ``workers`` spawned processes (``function`` must be picklable: a
    module-level function or a ``functools.partial`` of one), and ``on_done(job, result)`` here as each finishes.

    A killed parent takes its workers with it (:func:`exit_with_parent`). The first job to fail cancels the jobs not
    yet started (the running ones finish) and its error is raised again, of the same type where it can be, its
    message prefixed with ``describe(job)``.
    """
    context = get_context("spawn")  # fresh processes: no CUDA or thread state is inherited
    pool = ProcessPoolExecutor(workers, context, initializer=exit_with_parent, initargs=(os.getpid(),))
    with pool:
        pending: dict[Future[Result], Job] = {pool.submit(function, job): job for job in jobs}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                try:
                    result = future.result()
                except Exception as exc:
                    for other in pending:
                        other.cancel()
                    message = f"{describe(job)}: {exc}"
                    try:
                        error = type(exc)(message)
                    except TypeError:  # an exception type that takes other arguments
                        error = RuntimeError(message)
                    raise error from exc
                on_done(job, result)
