"""fpt_peft.jobs: jobs in spawned workers, each result handed back as it finishes, the first failure named."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest

from fpt_peft.jobs import run_jobs


def square_or_fail(job: int, folder: str) -> int:
    """A job: mark that it started, then fail (job 2) or return its square."""
    (Path(folder) / str(job)).touch()
    time.sleep(0.3)
    if job == 2:
        raise ValueError("no two")
    return job * job


def test_every_result_is_handed_back_as_its_job_finishes(tmp_path: Path) -> None:
    done: dict[int, int] = {}
    run_jobs(functools.partial(square_or_fail, folder=str(tmp_path)), [1, 3, 4, 5], 2, done.__setitem__)
    assert done == {1: 1, 3: 9, 4: 16, 5: 25}


def test_the_first_failure_is_raised_naming_its_job_and_the_jobs_not_started_never_run(tmp_path: Path) -> None:
    done: dict[int, int] = {}
    jobs = [1, 2, *range(10, 20)]
    with pytest.raises(ValueError, match=r"^job 2 failed: no two$"):
        run_jobs(
            functools.partial(square_or_fail, folder=str(tmp_path)),
            jobs,
            1,
            done.__setitem__,
            describe=lambda job: f"job {job} failed",
        )
    started = {int(p.name) for p in tmp_path.iterdir()}
    assert done == {1: 1} or done == {1: 1, 10: 100}  # the one job already queued behind the failure may finish
    # The executor hands a few jobs ahead to its worker; the others were cancelled, never run.
    assert {1, 2} <= started and len(started - {1, 2}) <= 4
