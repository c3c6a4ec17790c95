"""Does the frozen LM help on this task? FPT beside its controls and classical baselines, with seeds and intervals.

    fpt-peft-compare --data heart.csv --label-column target --out-dir compare/heart
    python -m fpt_peft.compare --task bit_memory --arms all --seeds 5 --out-dir compare/bit_memory

Every trained arm runs once per seed and learning rate (``--lrs``) through :func:`fpt_peft.training.train`; each seed
keeps the rate whose best step scores highest on a validation split carved from the training data
(``--validation-fraction``, stratified, drawn per seed), and reports the test score of that run's best validation
step. Nothing is chosen on the test split. Per arm: the test score of every seed, its mean and a 95% Student-t
interval over seeds; per other arm: the paired difference ``fpt_pretrained - arm`` over seeds, with its interval.
"helps" (against a classical baseline: "better") is said only when that interval lies above zero, "hurts" ("worse")
when it lies below; otherwise "no difference detected".

Arms (:data:`ARMS`): FPT on the pretrained LM, on a random one, on one whose weights are shuffled within each tensor
(the pretrained statistics without the learned structure), full finetuning, training every weight from scratch,
one random trainable block in place of the LM, no LM at all (:class:`~fpt_peft.controls.NoLM`), the pretrained FPT
on inputs whose token order is shuffled per example, and the classical baselines for the data's kind
(:mod:`fpt_peft.baselines`).

The output folder gets ``compare.json`` (every number, the settings, the provenance), ``compare.md`` (the table and
the verdicts) and ``compare.png`` (means with intervals); ``runs/`` holds one result file and log per run, so that
``--resume`` continues an interrupted comparison. The user's data (``--data``) is read as ``recipes/own_data.py``
reads it, its test split drawn once (seed 0) for every seed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .arguments import add_own_data_args, own_data_options, run_recipe
from .baselines import BASELINES, BASELINES_BY_KIND
from .jobs import run_jobs
from .pretrained import DEFAULT_MODEL, check_model_name

ARMS: dict[str, dict[str, Any]] = {
    "fpt_pretrained": {"init": "pretrained"},
    "fpt_random": {"init": "random"},
    "fpt_random_matched": {"init": "shuffled"},
    "full_pretrained": {"finetune": "full"},
    "scratch": {"init": "random", "finetune": "full"},
    "attn_only": {"init": "random", "finetune": "full", "num_layers": 1},
    "no_lm": {},
    "shuffled": {},
}
"""The trained arms and the :class:`~fpt_peft.arguments.FPTTrainingArguments` options that make each one."""
DEFAULT_ARMS = ("fpt_pretrained", "fpt_random", "no_lm")
REFERENCE = "fpt_pretrained"
BUILT_IN_TASKS = ("bit_memory", "bit_xor", "listops", "digits")
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "bit_memory": {"num_train": 2000, "num_eval": 200, "n_bits": 50, "patch_size": 25},
    "bit_xor": {"num_train": 2000, "num_eval": 200, "n_bits": 10, "patch_size": 5},
    "listops": {"num_train": 1000, "num_eval": 300, "max_tokens": 32},
    "digits": {},
}
"""CPU-sized data of the built-in tasks (finite: every arm and baseline sees the same examples; bit XOR of 10 bits,
so that most test inputs were never trained on)."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One run of the comparison: an arm, a seed and (trained arms) a learning rate."""

    arm: str
    seed: int
    lr: float | None = None

    @property
    def name(self) -> str:
        """The run's file name: ``<arm>-seed<seed>[-lr<lr>]``."""
        return f"{self.arm}-seed{self.seed}" + ("" if self.lr is None else f"-lr{self.lr:g}")


# ------------------------------------------------------------------------------------------------ the command line
def build_parser() -> argparse.ArgumentParser:
    """The ``fpt-peft-compare`` command line (the data flags are those of ``recipes/own_data.py``)."""
    parser = argparse.ArgumentParser(
        prog="fpt-peft-compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=BUILT_IN_TASKS, help="A built-in task at CPU size (or --data).")
    add_own_data_args(parser, required=False)
    runs = parser.add_argument_group("comparison")
    runs.add_argument(
        "--arms",
        nargs="+",
        default=None,
        help=f"Arms, or 'all'. Default: {' '.join(DEFAULT_ARMS)} and the classical baselines of the data's kind.",
    )
    runs.add_argument("--seeds", type=int, default=3, help="Seeds per arm (0, 1, ...). Default: 3.")
    runs.add_argument(
        "--lrs",
        type=float,
        nargs="+",
        default=[3e-4, 1e-3, 3e-3],
        help="Learning rates tried per seed, chosen on validation. Default: 3e-4 1e-3 3e-3.",
    )
    runs.add_argument("--model", default=DEFAULT_MODEL, help="Backbone. Default: minilm.")
    runs.add_argument("--max-steps", type=int, default=100, help="Steps per run. Default: 100.")
    runs.add_argument("--batch-size", type=int, default=16, help="Batch size. Default: 16.")
    runs.add_argument("--eval-every", type=int, default=20, help="Validation every N steps. Default: 20.")
    runs.add_argument("--validation-fraction", type=float, default=0.1, help="Of the training data. Default: 0.1.")
    runs.add_argument("--out-dir", type=Path, required=True, help="Output folder.")
    runs.add_argument("--workers", type=int, default=1, help="Runs at once, each in its own process. Default: 1.")
    runs.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="Default: cpu.")
    runs.add_argument("--resume", action="store_true", help="Continue the comparison in --out-dir.")
    return parser


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Argument mistakes, before anything is loaded: argparse's one ``error:`` line and exit status 2."""
    if (args.task is None) == (args.data is None):
        parser.error("pass exactly one of --task (a built-in task) and --data (your data).")
    for name in ("seeds", "max_steps", "batch_size", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if args.eval_every < 1:
        parser.error(f"--eval-every must be >= 1 (each run keeps its best validation step), got {args.eval_every}.")
    if not 0 < args.validation_fraction < 1:
        parser.error(
            f"--validation-fraction must be in (0, 1): the rates are chosen there, got {args.validation_fraction}."
        )
    if any(not (lr > 0 and math.isfinite(lr)) for lr in args.lrs):
        parser.error(f"--lrs must all be finite and > 0, got {args.lrs}.")
    known = [*ARMS, *BASELINES]
    unknown = [a for a in args.arms or [] if a not in (*known, "all")]
    if unknown:
        parser.error(f"--arms: unknown {unknown}; expected 'all' or some of {known}.")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available here; pass --device cpu.")
    try:
        check_model_name(args.model)
    except ValueError as exc:
        parser.error(str(exc))
    if args.out_dir.exists() and any(args.out_dir.iterdir()) and not args.resume:
        parser.error(
            f"--out-dir {str(args.out_dir)!r} is not empty: pass --resume to continue its comparison, or "
            "another folder."
        )


def _arms(requested: Sequence[str] | None, kind: str | None) -> list[str]:
    """The arms to run: the requested ones (``all``: every trained arm and the baselines of ``kind``)."""
    classical = list(BASELINES_BY_KIND[kind])
    if requested is None:
        return [*DEFAULT_ARMS, *classical]
    if "all" in requested:
        return [*ARMS, *classical]
    wrong = [a for a in requested if a in BASELINES and a not in classical]
    if wrong:
        data = f"{kind} data" if kind else "data that is neither a table, a series nor an image"
        raise ValueError(f"--arms {wrong}: not a baseline of {data}; its baselines are {classical}.")
    if REFERENCE not in requested:
        raise ValueError(f"--arms must include {REFERENCE}: every difference is taken against it.")
    return list(dict.fromkeys(requested))


# ----------------------------------------------------------------------------------------------------- one run
_TASKS: dict[str, Any] = {}  # per process: the task of the comparison, loaded once


def _load(settings: dict[str, Any]) -> Any:
    from .data import load_task

    key = json.dumps(settings["data"], sort_keys=True)
    if key not in _TASKS:
        data = settings["data"]
        _TASKS[key] = load_task(data["task"], **data["options"])
    return _TASKS[key]


def run_job(job: Job, settings: dict[str, Any], runs_dir: str, threads: int | None = None) -> dict[str, Any]:
    """Run ``job`` (its output and log in ``runs_dir/<job name>``) and return its scores: ``test``, ``validation``,
    and for trained arms ``validation_loss``, ``kept_step`` and ``seconds``."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(runs_dir) / job.name
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "log.txt", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        started = time.perf_counter()
        task = _load(settings)
        metric = task.spec.metric
        if job.arm in BASELINES:
            from .baselines import fit_baseline
            from .selection import with_validation

            held = with_validation(task, settings["validation_fraction"], job.seed)
            result: dict[str, Any] = fit_baseline(job.arm, held, job.seed)
        else:
            result = _train(job, task, settings, run_dir)
            result = {
                "test": result[metric],
                "validation": result[f"validation_{metric}"],
                "validation_loss": result["validation_loss"],
                "kept_step": int(result["kept_step"]),
            }
        result["seconds"] = time.perf_counter() - started
    for heavy in ("adapter", "checkpoints"):  # the numbers are what a comparison keeps
        shutil.rmtree(run_dir / heavy, ignore_errors=True)
    return result


def _train(job: Job, task: Any, settings: dict[str, Any], run_dir: Path) -> dict[str, float]:
    from accelerate.utils import set_seed

    from .arguments import FPTTrainingArguments
    from .controls import NoLM, shuffle_tokens
    from .modeling import load_backbone
    from .training import train
    from .tuner.discovery import hidden_size_of

    assert job.lr is not None
    args = FPTTrainingArguments(
        model=settings["model"],
        learning_rate=job.lr,
        max_steps=settings["max_steps"],
        batch_size=settings["batch_size"],
        eval_every=settings["eval_every"],
        validation_fraction=settings["validation_fraction"],
        keep="best",
        save_every=0,
        keep_checkpoints=1,
        log_every=settings["eval_every"],
        seed=job.seed,
        cpu=settings["device"] == "cpu",
        output_dir=str(run_dir),
        overwrite_output_dir=True,
        **ARMS[job.arm],
    )
    model = None
    if job.arm == "no_lm":
        width = hidden_size_of(load_backbone(settings["model"]))
        set_seed(job.seed)
        model = NoLM.for_task(task.spec, width or 0)
    if job.arm == "shuffled":
        task = shuffle_tokens(task, job.seed)
    return train(task, args, model=model)


# -------------------------------------------------------------------------------------------------- statistics
def mean_ci95(values: Sequence[float], bounds: tuple[float, float] | None = None) -> tuple[float, list[float] | None]:
    """The mean of ``values`` and its 95% Student-t interval ([low, high], clipped to ``bounds`` where given; None
    for fewer than 2 values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    from scipy.stats import t

    half = float(t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return mean, [low, high]


def verdict(interval: list[float] | None, baseline: bool = False) -> str:
    """What an interval of ``fpt_pretrained - arm`` allows us to say: "helps" (against a classical ``baseline``:
    "better") only when it lies above zero, "hurts" ("worse") only below, else "no difference detected"."""
    if interval is None:
        return "no interval (one seed)"
    if interval[0] > 0:
        return "better" if baseline else "helps"
    if interval[1] < 0:
        return "worse" if baseline else "hurts"
    return "no difference detected"


def _choose(runs: dict[float, dict[str, Any]]) -> float:
    """The rate of the run with the best validation score (ties: lower validation loss, then the smaller rate)."""
    return min(runs, key=lambda lr: (-runs[lr]["validation"], runs[lr]["validation_loss"], lr))


def summarize(arms: Sequence[str], seeds: int, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per arm: the test and validation score of each seed (at its chosen rate), their mean and interval; per arm
    other than the reference: the paired differences, their mean, interval and verdict."""
    summary: dict[str, Any] = {"arms": {}, "differences": {}}
    for arm in arms:
        test, validation, lrs = [], [], []
        for seed in range(seeds):
            if arm in BASELINES:
                chosen, lr = results[Job(arm, seed).name], None
            else:
                runs = {r["lr"]: r for r in results.values() if r["arm"] == arm and r["seed"] == seed}
                lr = _choose(runs)
                chosen = runs[lr]
            test.append(chosen["test"])
            validation.append(chosen.get("validation"))
            lrs.append(lr)
        mean, interval = mean_ci95(test, bounds=(0.0, 1.0))  # every metric here is a fraction
        summary["arms"][arm] = {"test": test, "validation": validation, "lr": lrs, "mean": mean, "ci95": interval}
    reference = summary["arms"][REFERENCE]["test"]
    for arm in arms:
        if arm != REFERENCE:
            differences = [a - b for a, b in zip(reference, summary["arms"][arm]["test"], strict=True)]
            mean, interval = mean_ci95(differences)
            summary["differences"][arm] = {
                "per_seed": differences,
                "mean": mean,
                "ci95": interval,
                "verdict": verdict(interval, baseline=arm in BASELINES),
            }
    return summary


# ------------------------------------------------------------------------------------------------------ reports
def _interval(mean: float, interval: list[float] | None, sign: bool = False) -> str:
    value = f"{mean:+.3f}" if sign else f"{mean:.3f}"
    return value + (
        ""
        if interval is None
        else f" [{interval[0]:+.3f}, {interval[1]:+.3f}]"
        if sign
        else f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    )


def report(data: dict[str, Any]) -> str:
    """``compare.md``: what was compared and how, the table, and one verdict per arm."""
    settings, metric = data["settings"], data["metric"]
    lines = [
        f"# Does the frozen LM help? {data['data']}",
        "",
        f"Metric: test {metric}, {settings['seeds']} seeds (0-{settings['seeds'] - 1}); learning rates "
        f"{settings['lrs']} tried per seed, chosen with the step on a validation split of "
        f"{settings['validation_fraction']:g} of the training data (stratified, per seed); the test split scored "
        f"once per run. {settings['max_steps']} steps, batch {settings['batch_size']}, model `{settings['model']}`. "
        "Intervals: 95% Student-t over seeds.",
        "",
        f"| arm | test {metric}: mean [95% CI] | per seed | chosen rates |",
        "|---|---|---|---|",
    ]
    for arm, row in data["arms"].items():
        seeds = ", ".join(f"{v:.3f}" for v in row["test"])
        rates = ", ".join("-" if lr is None else f"{lr:g}" for lr in row["lr"])
        lines.append(f"| {arm} | {_interval(row['mean'], row['ci95'])} | {seeds} | {rates} |")
    lines += ["", f"| {REFERENCE} minus | mean [95% CI] | verdict |", "|---|---|---|"]
    for arm, row in data["differences"].items():
        lines.append(f"| {arm} | {_interval(row['mean'], row['ci95'], sign=True)} | {row['verdict']} |")
    lines += [
        "",
        'Verdicts follow the interval of the paired differences: "helps" (against a classical baseline: '
        '"better") only when it lies above zero, "hurts" ("worse") only below; otherwise no difference was '
        "detected. Arm intervals are clipped to [0, 1].",
    ]
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    """``compare.png``: each arm's mean test score with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(data["arms"])
    means = [data["arms"][a]["mean"] for a in arms]
    errors = [
        [0.0, 0.0] if (ci := data["arms"][a]["ci95"]) is None else [m - ci[0], ci[1] - m]
        for a, m in zip(arms, means, strict=True)
    ]
    figure, axis = plt.subplots(figsize=(max(5.0, 0.9 * len(arms)), 3.5))
    axis.bar(
        arms,
        means,
        yerr=list(map(list, zip(*errors, strict=True))),
        capsize=4,
        color=["tab:blue" if a == REFERENCE else "tab:gray" for a in arms],
    )
    axis.set_ylabel(f"test {data['metric']}")
    axis.set_title(f"{data['data']}: mean and 95% interval over {data['settings']['seeds']} seeds", fontsize=9)
    axis.tick_params(axis="x", labelrotation=30)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison the arguments describe, write ``compare.json``/``.md``/``.png``; return the JSON's data."""
    started = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(args, parser)
    from .data import load_task
    from .durable import write_text_atomically
    from .provenance import provenance

    if args.task:
        data = {"task": args.task, "options": TASK_DEFAULTS[args.task]}
    else:
        data = {"task": "own_data", "options": {**own_data_options(args), "seed": 0}}
    task = load_task(data["task"], **data["options"])
    arms = _arms(args.arms, task.kind)
    settings = {
        "data": data,
        "arms": arms,
        "seeds": args.seeds,
        "lrs": sorted(args.lrs),
        "model": args.model,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "eval_every": args.eval_every,
        "validation_fraction": args.validation_fraction,
        "device": args.device,
    }
    out: Path = args.out_dir
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    saved_settings = out / "settings.json"
    if saved_settings.exists() and json.loads(saved_settings.read_text()) != json.loads(json.dumps(settings)):
        raise ValueError(
            f"--resume: {out} holds a comparison with other settings ({saved_settings}); pass the same "
            "arguments, or another --out-dir."
        )
    write_text_atomically(saved_settings, json.dumps(settings, indent=2) + "\n")

    jobs = [
        Job(arm, seed, lr)
        for arm in arms
        for seed in range(args.seeds)
        for lr in ([None] if arm in BASELINES else settings["lrs"])
    ]
    results: dict[str, dict[str, Any]] = {}
    for job in jobs:
        if (done := runs_dir / f"{job.name}.json").exists():
            results[job.name] = json.loads(done.read_text())
    todo = [job for job in jobs if job.name not in results]
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), initial=len(results), desc="compare: runs", unit="run")

    def record(job: Job, scores: dict[str, Any]) -> None:
        result = {"arm": job.arm, "seed": job.seed, "lr": job.lr, **scores}
        write_text_atomically(runs_dir / f"{job.name}.json", json.dumps(result, indent=2) + "\n")
        results[job.name] = result
        bar.update(1)
        bar.set_postfix_str(f"{job.name}: test {scores['test']:.3f}")

    run = functools.partial(run_job, settings=settings, runs_dir=str(runs_dir), threads=threads)

    def describe(job: Job) -> str:
        return f"Run {job.name} failed (its log: {runs_dir / job.name / 'log.txt'})"

    run_jobs(run, todo, args.workers, record, describe)
    bar.close()

    summary = summarize(arms, args.seeds, results)
    name = args.task or Path(str(args.data)).name
    result_data = {
        "data": name if args.task else f"{name} ({task.kind})",
        "metric": task.spec.metric,
        **summary,
        "settings": settings,
        "runs": [results[job.name] for job in jobs],
        "seconds": {  # this invocation's wall time (a resumed one ran only what was missing), and every run's sum
            "wall": time.perf_counter() - started,
            "runs": sum(r["seconds"] for r in results.values()),
        },
        "provenance": provenance(args.device),
        "command": "fpt-peft-compare " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    write_text_atomically(out / "compare.json", json.dumps(result_data, indent=2) + "\n")
    markdown = report(result_data)
    write_text_atomically(out / "compare.md", markdown)
    plot(result_data, out / "compare.png")
    print(markdown + f"\nWrote {out / 'compare.json'}, {out / 'compare.md'} and {out / 'compare.png'}.")
    return result_data


def cli() -> None:
    """The ``fpt-peft-compare`` console script: a mistake found after parsing is one line and exit status 2."""
    run_recipe(main)


if __name__ == "__main__":
    cli()
