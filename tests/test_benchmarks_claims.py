"""Smoke tests of the accuracy benchmarks (pretrained vs random, ablation): each runs with ``--quick`` in a subprocess.

Checked: the JSON's structure and sanity (accuracies in [0, 1], eval steps increasing, every configured learning
rate and every set-up present, the chosen rate one of them) and that a plot is written. No timings and no results
are asserted: a quick run trains for a few steps only.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.sweep_journal import journal_path

from .helpers import run_benchmark_quick
from .training_utils import ROOT

# End-to-end: real processes and training runs. `make test-slow` runs them (and CI).
pytestmark = pytest.mark.slow

TASKS = {"bit_xor", "bit_memory", "listops", "digits"}
RUNGS = ["output only", "+ layer norms", "+ input", "+ positions"]


def _run(module: str, out_dir: Path, name: str, *extra: str) -> dict[str, Any]:
    data = run_benchmark_quick(module, out_dir, name, *extra)
    assert data["command"].startswith(f"python -m benchmarks.{module}")
    return data


def _check_run(run: dict[str, Any]) -> None:
    steps, accuracy = run["eval_steps"], run["accuracy"]
    assert steps[0] == 0 and steps[-1] == run["steps_trained"] == run["steps"] > 0, "scored at start and end"
    assert all(a < b for a, b in itertools.pairwise(steps)), steps
    assert len(accuracy) == len(steps) == len(run["eval_loss"]) == len(run["train_loss"])
    assert all(0.0 <= a <= 1.0 for a in accuracy), accuracy
    assert run["final_accuracy"] == accuracy[-1]
    assert run["metric"] == ("per_bit_accuracy" if run["task"].startswith("bit_") else "accuracy")
    assert run["trainable_parameters"] > 0
    for loss in run["eval_loss"] + run["train_loss"][1:]:
        assert loss is None or (math.isfinite(loss) and loss >= 0)


def _check_summary(summary: dict[str, Any], lrs: list[float], seeds: list[int]) -> None:
    assert summary["learning_rates"] == sorted(lrs)
    assert set(summary["per_lr"]) == {f"{lr:g}" for lr in lrs}, "every configured learning rate is reported"
    assert summary["best_lr"] in lrs
    assert isinstance(summary["best_lr_at_edge_of_grid"], bool)
    assert summary["seeds"] == seeds
    assert 0.0 <= summary["final_accuracy_mean"] <= 1.0
    assert all(0.0 <= a <= 1.0 for a in summary["final_accuracy"])
    steps = summary["curve_steps"]
    assert all(a < b for a, b in itertools.pairwise(steps))
    for low, mean, high in zip(
        summary["curve_accuracy_min"], summary["curve_accuracy_mean"], summary["curve_accuracy_max"], strict=True
    ):
        assert 0.0 <= low <= mean + 1e-12 and mean <= high + 1e-12 and high <= 1.0
    for step in summary["steps_to_threshold"]:
        assert step is None or step in steps


def test_pretrained_vs_random_quick(tmp_path: Path) -> None:
    data = _run("pretrained_vs_random", tmp_path, "pvr-test")
    settings = data["settings"]
    assert set(data["tasks"]) == set(settings["tasks"]) == TASKS
    assert settings["inits"] == ["pretrained", "random"]
    for name, task in data["tasks"].items():
        lrs = settings["lrs"][name]
        assert lrs and task["plan"]["lrs"] == lrs
        for init in ("pretrained", "random"):
            _check_summary(task[init], lrs, settings["sweep_seeds"] + settings["confirm_seeds"])
        assert task["pretrained_minus_random"] == pytest.approx(
            task["pretrained"]["final_accuracy_mean"] - task["random"]["final_accuracy_mean"]
        )
        assert set(task["paper"]["accuracy"]) == {"pretrained", "random"}
    assert len(data["runs"]) == sum(2 * len(lrs) for lrs in settings["lrs"].values())
    for run in data["runs"]:
        _check_run(run)
        assert run["init"] == run["label"]
    assert {(r["task"], r["init"], r["lr"]) for r in data["runs"]} == {
        (name, init, lr) for name, lrs in settings["lrs"].items() for init in ("pretrained", "random") for lr in lrs
    }


def test_pretrained_vs_random_full_size_quick(tmp_path: Path) -> None:
    """``--size full``: the paper's formulation (endless bit streams, 0/1 XOR, input dropout, fixed ListOps at a fixed
    length, N(0, 1) embedding) reaches every run."""
    data = _run("pretrained_vs_random", tmp_path, "full-test", "--size", "full")
    settings = data["settings"]
    assert settings["size"] == "full" and set(data["tasks"]) == {"bit_xor", "bit_memory", "listops"}
    for run in data["runs"]:
        _check_run(run)
        kwargs = run["task_kwargs"]
        if run["task"].startswith("bit_"):
            assert kwargs["stream"] is True and "num_train" not in kwargs and run["train_examples"] is None
            assert run["model_kwargs"] == {"input_dropout": 0.1} and run["batch_size"] == 4
            assert run["stop_at"] == 1.0
        else:
            assert kwargs["formulation"] == "fixed" and run["model_kwargs"] == {"embedding_init": "normal"}
            assert run["train_examples"] == kwargs["num_train"]
    xor = next(r for r in data["runs"] if r["task"] == "bit_xor")
    assert xor["task_kwargs"]["values"] == "01"


def test_pretrained_vs_random_one_init_each_then_merged(tmp_path: Path) -> None:
    """``--inits`` trains only that init (the other can run elsewhere, with its own grid); ``--merge`` reports both
    files' runs as one sweep, without training."""
    parts = {}
    for init in ("random", "pretrained"):
        args = ("--tasks", "bit_xor", "--inits", init)
        parts[init] = data = _run("pretrained_vs_random", tmp_path, f"{init}-test", *args)
        assert data["settings"]["inits"] == [init] and {r["init"] for r in data["runs"]} == {init}
        assert list(data["tasks"]["bit_xor"]) == ["plan", "paper", init]  # no gap without both inits
    files = [str(tmp_path / f"{init}-test.json") for init in parts]
    merged = _run("pretrained_vs_random", tmp_path, "merged-test", "--merge", *files)
    assert merged["settings"]["inits"] == ["pretrained", "random"]
    assert merged["runs"] == parts["random"]["runs"] + parts["pretrained"]["runs"]  # saved runs, not trained again
    task = merged["tasks"]["bit_xor"]
    for init, part in parts.items():
        assert task[init] == part["tasks"]["bit_xor"][init]  # the same summary as in its own file
    assert task["pretrained_minus_random"] == pytest.approx(
        task["pretrained"]["final_accuracy"][0] - task["random"]["final_accuracy"][0]
    )
    assert merged["environment"]["merged_from"] == ["random-test.json", "pretrained-test.json"]


def test_a_killed_sweep_resumes_from_its_journal(tmp_path: Path) -> None:
    """The sweep is killed (SIGKILL) once a run has finished; ``--resume`` trains only the rest, and the result file
    holds the journaled runs as they were, and every run once; the journal is removed."""
    args = ["--tasks", "bit_xor", "digits", "--out-dir", str(tmp_path), "--name", "stopped"]
    journal = journal_path(tmp_path, "stopped")
    command = [sys.executable, "-m", "benchmarks.pretrained_vs_random", "--quick", *args]
    sweep = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (journal.exists() and journal.read_text().count("\n") >= 1) and time.monotonic() < deadline:
        assert sweep.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.05)
    assert sweep.poll() is None, "the sweep ended before it could be killed"
    sweep.kill()
    sweep.wait()
    finished = [json.loads(line)["result"] for line in journal.read_text().splitlines()]
    assert 1 <= len(finished) < 4 and not (tmp_path / "stopped.json").exists()
    resumed = subprocess.run([*command, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(finished)} of 4 runs already finished" in resumed.stdout
    data = json.loads((tmp_path / "stopped.json").read_text())
    assert len(data["runs"]) == 4 and all(run in data["runs"] for run in finished)  # not trained again
    assert len({(r["task"], r["init"]) for r in data["runs"]}) == 4 and not journal.exists()


def test_ablation_quick(tmp_path: Path) -> None:
    data = _run("ablation", tmp_path, "ablation-test")
    settings = data["settings"]
    assert set(data["tasks"]) == {"digits", "bit_memory"}
    assert list(settings["rungs"]) == RUNGS
    for name, task in data["tasks"].items():
        lrs = settings["lrs"][name]
        assert list(task["rungs"]) == RUNGS
        assert list(task["paper"]["accuracy"]) == RUNGS
        counts = []
        for rung in RUNGS:
            _check_summary(task["rungs"][rung], lrs, settings["sweep_seeds"] + settings["confirm_seeds"])
            counts.append(task["rungs"][rung]["trainable_parameters"])
        # Each rung trains strictly more parameters than the one before.
        assert all(a < b for a, b in itertools.pairwise(counts)), counts
    for run in data["runs"]:
        _check_run(run)
        assert run["init"] == "pretrained" and run["flags"] == settings["rungs"][run["label"]]
