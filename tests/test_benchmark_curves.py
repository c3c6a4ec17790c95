"""The accuracy benchmarks' training runs (:func:`benchmarks.common.record_curve`): endless streams, stopping at
convergence, the full-size plans' agreement with ``--preset paper``, and sweeps resumed from their journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from benchmarks.common import FULL_SIZE_PLANS, CurveRun, record_curve, run_curves, summarize_sweep
from benchmarks.sweep_journal import SweepJournal, journal_path
from fpt_peft.presets import paper_defaults

from .helpers import child_processes
from .training_utils import ROOT, offline_env

STREAM = {"n_bits": 5, "patch_size": 5, "values": "01", "stream": True, "num_eval": 8}


def _run(**changes: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "task": "bit_xor",
        "label": "pretrained",
        "lr": 1e-3,
        "task_kwargs": STREAM,
        "steps": 6,
        "batch_size": 2,
        "eval_every": 3,
        "eval_batch_size": 8,
        "model_kwargs": {"input_dropout": 0.1},
    }
    return record_curve(CurveRun(**{**settings, **changes}))


def test_an_endless_stream_trains_the_requested_steps() -> None:
    result = _run()
    assert result["train_examples"] is None  # a stream has no size
    assert result["steps_trained"] == 6 and result["eval_steps"] == [0, 3, 6]
    assert result["train_loss"][0] is None and all(loss is not None for loss in result["train_loss"][1:])


def test_stop_at_ends_the_run_at_the_first_evaluation_reaching_it() -> None:
    reached = _run(stop_at=0.0)  # every accuracy reaches 0: converged before the first step
    assert reached["steps_trained"] == 0 and reached["eval_steps"] == [0]
    unreachable = _run(stop_at=1.01)
    assert unreachable["steps_trained"] == 6 and unreachable["eval_steps"] == [0, 3, 6]


def test_a_finite_task_without_for_loader_is_still_a_dataset() -> None:
    result = _run(task_kwargs={"n_bits": 5, "patch_size": 5, "num_train": 8, "num_eval": 8})
    assert result["train_examples"] == 8 and result["steps_trained"] == 6


def test_summary_curves_cover_the_evaluations_every_seed_made() -> None:
    """A seed stopped at convergence has a shorter curve; the mean curve ends where it ended."""

    def result(seed: int, steps: list[int], accuracy: list[float]) -> dict[str, Any]:
        return {
            "task": "bit_xor",
            "label": "pretrained",
            "lr": 1e-3,
            "seed": seed,
            "steps": 300,
            "eval_steps": steps,
            "accuracy": accuracy,
            "final_accuracy": accuracy[-1],
            "seconds": 1.0,
        }

    runs = [result(0, [0, 100, 200], [0.5, 0.9, 1.0]), result(1, [0, 100, 200, 300], [0.5, 0.6, 0.8, 1.0])]
    summary = summarize_sweep(runs, {"bit_xor": 1.0})["bit_xor/pretrained"]
    assert summary["curve_steps"] == [0, 100, 200]
    assert summary["curve_accuracy_mean"] == pytest.approx([0.5, 0.75, 0.9])
    assert summary["steps_to_threshold"] == [200, 300]


@pytest.mark.parametrize("task", ["bit_xor", "bit_memory"])
def test_full_size_bit_plans_are_the_paper_preset(task: str) -> None:
    """The benchmark trains what ``--preset paper`` sets (whose values test_presets checks against the official
    code), only the backbone differs (the packaged MiniLM) and the evaluation set is drawn once."""
    plan, paper = FULL_SIZE_PLANS[task], paper_defaults(task)
    for key, value in plan.task_kwargs.items():
        if key != "num_eval":
            assert paper[key] == value, key
    assert plan.batch_size == paper["batch_size"] and plan.model_kwargs == {"input_dropout": paper["input_dropout"]}
    assert 1e-3 in plan.lrs  # the paper's learning rate is on the grid


def test_full_size_listops_plan_is_the_paper_preset_with_the_fixed_loader() -> None:
    plan, paper = FULL_SIZE_PLANS["listops"], paper_defaults("listops")
    assert plan.task_kwargs["formulation"] == "fixed" and paper["formulation"] == "official"  # Rothermel's fix
    assert plan.task_kwargs["max_tokens"] == paper["max_tokens"] == 512
    assert plan.batch_size == paper["batch_size"]
    assert plan.model_kwargs == {"embedding_init": paper["embedding_init"]}


def test_full_size_arguments_are_checked_and_capped(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.pretrained_vs_random import parse_args, plans_for

    args = parse_args(["--size", "full", "--max-steps", "800"])
    assert args.tasks == list(FULL_SIZE_PLANS) and args.name == "full_size"
    plans = plans_for(args)
    assert plans["bit_memory"].steps == 800 and plans["bit_memory"].eval_every == 100  # the cadence is kept
    assert plans["listops"].steps == 800 and plans["listops"].task_kwargs["max_tokens"] == 512
    assert parse_args([]).name == "pretrained_vs_random" and "digits" in parse_args([]).tasks
    for bad, named in (
        (["--size", "full", "--tasks", "digits"], "--tasks"),
        (["--max-steps", "0"], "--max-steps"),
        (["--merge", "saved.json", "--resume"], "--resume"),
    ):
        with pytest.raises(SystemExit, match=r"^2$") as raised:
            parse_args(bad)
        assert raised.value.code == 2 and f"argument {named}" in capsys.readouterr().err


def test_a_resumed_sweep_trains_only_the_runs_its_journal_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sweep killed after its first run (and in the middle of journaling the second) is resumed: the first run's
    result comes back from the journal unchanged, not trained again; the cut line is dropped and that run retrained."""
    base = CurveRun("bit_xor", "pretrained", 1e-3, STREAM, steps=2, batch_size=2, eval_every=2, eval_batch_size=8)
    runs = [replace(base, lr=lr) for lr in (1e-3, 3e-3, 1e-2)]
    path = journal_path(tmp_path, "sweep")
    first = run_curves(runs[:1], journal=SweepJournal(path))[0]
    with path.open("a") as file:  # the kill came while the second run's line was being written
        file.write('{"run": {"task": "bit_xor", "lr": 0.0')
    journal = SweepJournal(path)
    assert list(journal.done.values()) == [first] and path.read_text().count("\n") == 1  # the cut line is gone
    capsys.readouterr()
    results = run_curves(runs, journal=journal)
    assert "1 of 3 runs already finished" in capsys.readouterr().out
    assert results[0] == first  # its wall time too: not trained again
    assert [r["lr"] for r in results] == [1e-3, 3e-3, 1e-2] and all(r["steps_trained"] == 2 for r in results)
    assert [json.loads(line)["result"] for line in path.read_text().splitlines()] == results  # each journaled once
    assert SweepJournal(path).result(replace(base, lr=1e-3, seed=1)) is None  # another run is not the same run


def test_a_stopped_sweep_is_not_overwritten_without_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.ablation import parse_args

    journal_path(tmp_path, "ablation").write_text("")
    with pytest.raises(SystemExit, match=r"^2$") as raised:
        parse_args(["--out-dir", str(tmp_path)])
    error = capsys.readouterr().err
    assert raised.value.code == 2 and "argument --resume" in error and "ablation.runs.jsonl" in error
    assert parse_args(["--out-dir", str(tmp_path), "--resume"]).journal.done == {}
    journal_path(tmp_path, "ablation").write_text('{"result": 1}\n')
    with pytest.raises(SystemExit, match=r"^2$") as raised:
        parse_args(["--out-dir", str(tmp_path), "--resume"])
    assert raised.value.code == 2 and "line 1: not a journaled run" in capsys.readouterr().err


def test_the_saved_full_size_runs_trained_todays_plans_for_at_most_the_papers_steps() -> None:
    """Every saved full-size run is reproducible by its command with the plans derived today."""
    from benchmarks import paper
    from benchmarks.common import RESULTS_DIR

    assert all(plan.steps == paper.STEPS_TO_CONVERGE[task][1] for task, plan in FULL_SIZE_PLANS.items())
    saved = [
        run
        for path in RESULTS_DIR.glob("*full*.json")
        if json.loads(path.read_text()).get("benchmark") == "pretrained_vs_random"
        for run in json.loads(path.read_text())["runs"]
    ]
    assert len(saved) >= 30
    for run in saved:
        plan = FULL_SIZE_PLANS[run["task"]]
        kwargs = {k: v for k, v in run["task_kwargs"].items() if k != "num_train"}  # the GPU ListOps run's own size
        assert kwargs == plan.task_kwargs and run["model_kwargs"] == plan.model_kwargs, run["task"]
        assert run["batch_size"] == plan.batch_size and run["steps"] <= plan.steps, run["task"]


@pytest.mark.parametrize(
    "name, task, init",
    [
        ("pretrained_vs_random", "digits", "random"),
        ("ablation", "digits", "+ input"),
        ("full_size-bit_memory", "bit_memory", "pretrained"),
    ],
)
def test_todays_loop_builds_the_saved_runs_models_exactly(name: str, task: str, init: str) -> None:
    """docs/results.md says the saved curves' runs train today through fpt_peft.training.train with the same model:
    its step-0 scores (before any step) equal the saved ones."""
    from dataclasses import fields

    from benchmarks.common import RESULTS_DIR

    saved = next(
        r
        for r in json.loads((RESULTS_DIR / f"{name}.json").read_text())["runs"]
        if r["task"] == task and r["label"] == init and r["seed"] == 0
    )
    run = CurveRun(**{f.name: saved[f.name] for f in fields(CurveRun) if f.name in saved})
    today = record_curve(replace(run, stop_at=0.0))  # every accuracy reaches 0: scored at step 0, then stopped
    assert today["steps_trained"] == 0 and today["trainable_parameters"] == saved["trainable_parameters"]
    assert today["accuracy"][0] == saved["accuracy"][0]
    assert today["eval_loss"][0] == pytest.approx(saved["eval_loss"][0], rel=1e-5)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_a_killed_sweeps_workers_end_with_it_mid_run(tmp_path: Path) -> None:
    """SIGKILL on a sweep (no clean-up runs) ends its worker processes in the middle of their runs."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    args = ["--tasks", "digits", "--lrs", "1e-3", "--confirm-seeds", "--steps-scale", "1000"]  # 4e5 steps
    command = [sys.executable, "-m", "benchmarks.pretrained_vs_random", *args, "--out-dir", str(tmp_path)]
    env = {**offline_env(), "TMPDIR": str(scratch)}  # where each run's temporary output folder appears
    parent = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while len(list(scratch.glob("curve-*/log"))) < 2:  # both workers are inside a run
            assert parent.poll() is None and time.monotonic() < deadline, parent.stderr and parent.stderr.read()
            time.sleep(0.5)
        workers = child_processes(parent.pid)
        assert workers, "no worker processes found"
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while (alive := [pid for pid in workers if os.path.exists(f"/proc/{pid}")]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, f"workers {alive} outlived the sweep"
    assert not list(tmp_path.glob("*.runs.jsonl")) or not (tmp_path / "pretrained_vs_random.runs.jsonl").read_text()


def test_a_failed_run_stops_the_sweep_naming_the_run() -> None:
    base = CurveRun("bit_xor", "pretrained", 1e-3, STREAM, steps=2, batch_size=2, eval_every=2, eval_batch_size=8)
    broken = replace(base, lr=3e-3, task_kwargs={"n_bits": 5, "patch_size": 5, "num_train": 1, "num_eval": 8})
    with pytest.raises(ValueError, match=r"^bit_xor pretrained lr 0\.003 seed 0 failed: The train split has 1 "):
        run_curves([broken, *(replace(base, seed=seed) for seed in range(6))], workers=2)
