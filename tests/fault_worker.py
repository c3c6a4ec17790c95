"""Real processes for tests/test_faults.py: training runs killed with SIGKILL, and a 2-process (gloo) run.

Run as ``python -m tests.fault_worker SCENARIO [SCENARIO ...] --root DIR`` from the repository root; prints one JSON
object (scenario -> results) on its last line. The process imports torch once and builds the tiny model and data,
then forks one child per training process, so that a run starts in about a second instead of five.

``kills``: one training run (save_every=1) is killed again and again, each time resumed with ``--resume-if-possible``:

- random kills: after the child has resumed, a random delay, then SIGKILL. The child pauses briefly at every phase
  of a checkpoint save (``pause=...``, see tests/checkpoint_faults.py) so that many kills land inside a
  checkpoint write; a trace of the phases tells where each kill landed.
- targeted kills: the child kills itself on entering one phase of a save (``kill=PHASE@STEP``), once per phase.

After each kill the worker records the latest complete checkpoint (step and weights), checks that every ``step_*``
folder verifies and that no checkpoint whose rename had happened was lost; the next child reports the step and
adapter weights it resumed with. A last child finishes the run; its adapter is compared with an uninterrupted run's.

``ddp_nan``: two processes (one gloo group); rank 1's batch of a known step holds a NaN. Both must raise.
"""

from __future__ import annotations

import argparse
import codecs
import functools
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)  # before any op: the process forks

import tqdm  # noqa: E402

# No tqdm monitor thread either: a child forked while it holds tqdm's lock would hang at its first progress bar.
tqdm.tqdm.monitor_interval = 0

import datasets  # noqa: E402
import evaluate  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import fpt_peft  # noqa: E402,F401
import fpt_peft.training as training  # noqa: E402
from fpt_peft.checkpoints import (  # noqa: E402
    WEIGHTS_NAME,
    checkpoint_step,
    is_adapter_key,
    latest_checkpoint,
    verify_checkpoint,
)
from fpt_peft.data import TaskData, load_task  # noqa: E402
from fpt_peft.training import FPTTrainingArguments, NonFiniteError, train  # noqa: E402

from .checkpoint_faults import SAVE_PHASES, install  # noqa: E402
from .training_utils import poisoned_xor, save_tiny_backbone  # noqa: E402

transformers.logging.set_verbosity_error()
datasets.disable_progress_bars()


def _fork(role: Callable[[], None], log: Path) -> int:
    """Run ``role()`` in a child process (output to ``log``) that exits without the parent's cleanup; its pid."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(fd, "w", buffering=1)  # noqa: SIM115  (for the child's lifetime)
            role()
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        os._exit(code)
    return pid


_STATUS: dict[int, int] = {}  # exit statuses of reaped children


def _wait(pid: int, timeout: float) -> int | None:
    """The child's exit status (negative: killed by that signal), or None if it is still running at the deadline."""
    deadline = time.monotonic() + timeout
    while pid not in _STATUS:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            _STATUS[pid] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        elif time.monotonic() > deadline:
            return None
        else:
            time.sleep(0.005)
    return _STATUS[pid]


def _kill(pid: int) -> int | None:
    """SIGKILL the child unless it has exited already; its exit status."""
    if _wait(pid, 0) is None:
        os.kill(pid, signal.SIGKILL)
    return _wait(pid, 30)


def _adapter_state(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / WEIGHTS_NAME))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------------- kills
def _run(task: TaskData, model: str, out: Path, fault: str, report: Path | None, **kw: Any) -> None:
    """One training process (in a forked child): resume, report what was resumed, train until done or killed."""
    install(fault)
    if report is not None:
        original = training.resume_latest

        def resume(accelerator: Any, checkpoints: Path, progress: Any, strict: bool, **kwargs: Any) -> None:
            original(accelerator, checkpoints, progress, strict, **kwargs)
            state = accelerator.unwrap_model(accelerator._models[0]).state_dict()
            adapter = {k: v.detach().clone().contiguous() for k, v in state.items() if is_adapter_key(k)}
            temp = report.with_suffix(".tmp")
            save_file(adapter, str(temp), metadata={"step": str(progress.step)})
            os.replace(temp, report)

        training.resume_latest = resume  # type: ignore[assignment]
    train(task, FPTTrainingArguments(model=model, output_dir=str(out), **kw))


def _trace_lines(trace: Path) -> list[tuple[int, str]]:
    if not trace.exists():
        return []
    lines = [line.split() for line in trace.read_text().splitlines()]
    return [(int(step), phase) for step, phase in lines]


def kills(root: Path, n_random: int = 20, pause: float = 0.02, max_delay: float = 0.6) -> dict[str, Any]:
    """Kill one run many times (random moments and every phase of a save); see the module docstring."""
    model = save_tiny_backbone(root / "tiny")
    task = load_task("bit_xor", num_train=256, num_eval=32, n_bits=5, patch_size=5)
    options: dict[str, Any] = {
        "max_steps": 80,
        "batch_size": 8,
        "save_every": 1,
        "keep_checkpoints": 2,
        "eval_every": 0,
        "log_every": 1,
    }
    rng = random.Random(1234)
    out, trace = root / "killed", root / "trace.txt"
    checkpoints = out / "checkpoints"
    plan = [("random", None)] * n_random + [("targeted", phase) for phase in SAVE_PHASES]
    rng.shuffle(plan)
    records: list[dict[str, Any]] = []
    started = time.monotonic()
    finished = False
    for i, (kind, phase) in enumerate([*plan, ("final", None)]):
        last = latest_checkpoint(checkpoints)
        expected_step = checkpoint_step(last) if last else 0
        expected = _adapter_state(last) if last else None
        report = root / f"report-{i}.safetensors"
        traced_before = len(_trace_lines(trace))
        if kind == "random":
            fault = f"trace={trace},pause={pause}"
        elif kind == "targeted":
            # Two steps on: the save of that step also prunes (keep=2), so every phase, "pruning" included, occurs.
            target = min(max(expected_step + 2, 3), options["max_steps"])
            fault = f"trace={trace},kill={phase}@{target}"
        else:
            fault = f"trace={trace}"
        run = functools.partial(_run, task, model, out, fault, report, resume_if_possible=True, **options)
        pid = _fork(run, root / "log.txt")
        record: dict[str, Any] = {"kind": kind, "phase": phase, "expected_step": expected_step}
        deadline = time.monotonic() + 90
        while not report.exists() and time.monotonic() < deadline and _wait(pid, 0) is None:
            time.sleep(0.005)
        if report.exists():
            resumed = load_file(str(report))
            with safe_open(str(report), framework="pt") as handle:
                record["resumed_step"] = int(handle.metadata()["step"])
            record["resumed_exact"] = _same(resumed, expected) if expected is not None else None
        if kind == "random":
            time.sleep(rng.uniform(0, max_delay))
        else:
            _wait(pid, 120)  # killed itself (targeted) or finished (final)
        with_status = _kill(pid)
        record["status"] = with_status
        lines = _trace_lines(trace)[traced_before:]
        record["last_phase"] = lines[-1][1] if lines else None
        record["inside_write"] = bool(lines) and lines[-1][1] != "done"
        renamed = [step for step, p in lines if p in ("renamed", "pruning", "done")]
        after = latest_checkpoint(checkpoints)
        record["latest_after"] = checkpoint_step(after) if after else 0
        record["nothing_lost"] = record["latest_after"] >= max([*renamed, expected_step])
        problems = []
        for folder in sorted(checkpoints.glob("step_*")):
            try:
                verify_checkpoint(folder)
            except Exception as exc:
                problems.append(str(exc))
        record["bad_final_folders"] = problems
        record["temp_left"] = sorted(p.name for p in checkpoints.glob(".tmp-*")) if checkpoints.exists() else []
        records.append(record)
        if with_status == 0:
            finished = True
            break
    interrupted = time.monotonic() - started
    # The same run, never interrupted (and without the fault hook), in its own child.
    straight = root / "straight"
    started = time.monotonic()
    pid = _fork(lambda: _run(task, model, straight, "", None, **options), root / "straight.txt")
    status = _wait(pid, 120)
    _kill(pid)
    a = load_file(str(out / "adapter/adapter_model.safetensors")) if finished else {}
    b = load_file(str(straight / "adapter/adapter_model.safetensors")) if status == 0 else {}
    return {
        "records": records,
        "finished": finished,
        "straight_status": status,
        "identical": bool(a) and _same(a, b),
        "metrics_identical": finished
        and json.loads((out / "metrics.json").read_text()) == json.loads((straight / "metrics.json").read_text()),
        "adapter_has_digest": "weights_sha256" in json.loads((out / "adapter/adapter_config.json").read_text())
        if finished
        else False,
        "adapter_leftovers": sorted(
            p.name
            for p in (out / "adapter").iterdir()
            if p.name.startswith((".fpt_peft.staging", ".fpt_peft.journal"))
        )
        if finished
        else [],
        "seconds_interrupted": round(interrupted, 1),
        "seconds_straight": round(time.monotonic() - started, 1),
    }


# --------------------------------------------------------------------------------------------------- ddp
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ddp_nan(root: Path) -> dict[str, Any]:
    """Two gloo processes; a NaN in rank 1's batch of step 5: both raise NonFiniteError naming step 5."""
    model = save_tiny_backbone(root / "tiny")
    task, index = poisoned_xor(256, seed=0, batch_size=4, step=5, rank=1, world=2)
    port = _free_port()
    out = root / "run"

    def rank_main(rank: int) -> None:
        os.environ.update(
            WORLD_SIZE="2",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        result: dict[str, Any]
        try:
            train(
                task,
                FPTTrainingArguments(
                    model=model,
                    output_dir=str(out),
                    max_steps=20,
                    batch_size=4,
                    save_every=1,
                    eval_every=0,
                    log_every=10,
                ),
            )
            result = {"raised": None}
        except NonFiniteError as exc:
            result = {"raised": type(exc).__name__, "message": str(exc), "step": exc.step, "kind": exc.kind}
        except Exception as exc:
            result = {"raised": type(exc).__name__, "message": str(exc), "trace": traceback.format_exc()[-2000:]}
        (root / f"rank{rank}.json").write_text(json.dumps(result))

    started = time.monotonic()
    pids = [_fork(lambda r=rank: rank_main(r), root / f"rank{rank}.txt") for rank in (0, 1)]  # type: ignore[misc]
    statuses = [_wait(pid, 120) for pid in pids]  # None: still running (hanging), then killed
    for pid in pids:
        _kill(pid)
    ranks = [json.loads(p.read_text()) if (p := root / f"rank{r}.json").exists() else None for r in (0, 1)]
    last = latest_checkpoint(out / "checkpoints")
    problems = []
    for folder in sorted((out / "checkpoints").glob("step_*")):
        try:
            verify_checkpoint(folder)
        except Exception as exc:
            problems.append(str(exc))
    return {
        "statuses": statuses,
        "ranks": ranks,
        "index": index,
        "latest": checkpoint_step(last) if last else None,
        "bad_final_folders": problems,
        "adapter_written": (out / "adapter").exists(),
        "seconds": round(time.monotonic() - started, 1),
    }


# --------------------------------------------------------------------------------------------------- permissions
def permissions(root: Path) -> dict[str, Any]:
    """A user without write permission on --output-dir (a child switched to uid 65534, as tests run as root)."""
    if os.geteuid() != 0:
        return {"skipped": "not root: tests/test_faults.py checks permission bits in-process"}
    base = Path(tempfile.mkdtemp(prefix="fpt-peft-train-perm-"))  # under /tmp: the user must be able to reach it
    try:
        os.chmod(base, 0o755)
        model = save_tiny_backbone(base / "model")
        for path in (base / "model").iterdir():
            os.chmod(path, 0o644)  # transformers writes the weights readable by their owner only
        task = load_task("bit_xor", num_train=64, num_eval=8, n_bits=5, patch_size=5)
        for name, mode in (("readonly", 0o555), ("writable", 0o755)):
            (base / name).mkdir()
            os.chown(base / name, 65534, 65534)
            os.chmod(base / name, mode)

        def as_nobody() -> None:
            codecs.lookup("unicode_escape")  # imported lazily (by the model card's template): the stdlib may be
            # under root's home (pyenv), out of the user's reach
            os.setgid(65534)
            os.setuid(65534)
            # evaluate creates a cache folder for every metric (under ~/.cache, root's here): give the user one.
            evaluate.config.HF_METRICS_CACHE = str(base / "writable" / "metrics-cache")
            result: dict[str, Any] = {"uid": os.getuid()}
            options: dict[str, Any] = {"model": model, "max_steps": 2, "batch_size": 4, "eval_every": 0}
            try:
                train(task, FPTTrainingArguments(output_dir=str(base / "readonly" / "run"), **options))
                result["readonly"] = "trained"
            except OSError as exc:
                result["readonly"] = {"type": type(exc).__name__, "errno": exc.errno, "message": str(exc)}
            result["writable"] = train(
                task, FPTTrainingArguments(output_dir=str(base / "writable" / "run"), **options)
            )
            (base / "writable" / "result.json").write_text(json.dumps(result))

        pid = _fork(as_nobody, root / "nobody.txt")
        status = _wait(pid, 120)
        _kill(pid)
        result = json.loads((base / "writable" / "result.json").read_text()) if status == 0 else {"status": status}
        result["readonly_untouched"] = os.listdir(base / "readonly") == []
        result["base"] = str(base)
        return result
    finally:
        shutil.rmtree(base, ignore_errors=True)


SCENARIOS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "kills": kills,
    "ddp_nan": ddp_nan,
    "permissions": permissions,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenarios", nargs="+", choices=sorted(SCENARIOS))
    parser.add_argument("--root", required=True)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for name in args.scenarios:
        folder = Path(args.root) / name
        folder.mkdir(parents=True, exist_ok=True)
        try:
            results[name] = SCENARIOS[name](folder)
        except Exception:
            results[name] = {"crashed": traceback.format_exc()[-3000:]}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
