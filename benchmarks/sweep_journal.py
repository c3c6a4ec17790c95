"""A learning-rate sweep's finished runs, journaled one line each as they end, so that a sweep stopped part-way
(killed, out of time on a lent GPU) continues where it stopped instead of training everything again."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any


def journal_path(out_dir: Path, name: str) -> Path:
    """Where the sweep that writes ``<out_dir>/<name>.json`` journals its runs."""
    return out_dir / f"{name}.runs.jsonl"


def run_key(run: Any) -> str:
    """The identity of a run (a ``CurveRun``): all its settings, as canonical JSON."""
    return json.dumps(asdict(run), sort_keys=True)


class SweepJournal:
    """The finished runs of one sweep in ``path``, one JSON line each: ``{"run": the run's settings, "result": its
    result}``.

    A run is appended as it finishes, in one write of the whole line, flushed to disk, so that a killed sweep loses
    only the runs it was training. Opening an existing journal reads its runs back (a last line cut short by the
    kill is dropped) for :func:`benchmarks.common.run_curves` to skip; the sweep removes the journal once its result
    file is written.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, dict[str, Any]] = {}
        if not path.exists():
            return
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data):  # the kill cut the last line short: that run is trained again
            with path.open("r+b") as file:
                file.truncate(len(complete))
        for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
            try:
                entry = json.loads(line)
                self.done[json.dumps(entry["run"], sort_keys=True)] = entry["result"]
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}, line {number}: not a journaled run ({error}); delete the file") from None

    def result(self, run: Any) -> dict[str, Any] | None:
        """The journaled result of ``run``, or None if it has not finished."""
        return self.done.get(run_key(run))

    def record(self, run: Any, result: dict[str, Any]) -> None:
        """Append ``run``'s ``result``."""
        line = json.dumps({"run": asdict(run), "result": result}) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())
        self.done[run_key(run)] = result

    def remove(self) -> None:
        """Delete the journal (the sweep's results are written)."""
        self.path.unlink(missing_ok=True)
