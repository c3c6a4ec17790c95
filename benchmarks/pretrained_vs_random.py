"""Frozen pretrained vs frozen random MiniLM (FPT), with the learning rate swept for both, on four tasks.

The paper's central comparison (Lu et al. 2021, FPT against random initialisation), scaled to a 2-core CPU: the same
architecture frozen the same way (FPT: layer norms, positions and the new input / output layers trained; attention
and feed-forward frozen), with the packaged, really pretrained MiniLM-L6-H384 weights (``init="pretrained"``) or the
same architecture freshly initialised (``init="random"``). Tasks: bit XOR, bit memory, ListOps and the offline 8x8
digits (sizes in :data:`benchmarks.common.TASK_PLANS`).

Following Rothermel et al. (2021), no comparison rests on one learning rate: every task and init is trained at every
rate of its grid on the sweep seed(s); per task and init the rate with the best final eval accuracy is chosen and
trained again on fresh confirmation seed(s) (:func:`benchmarks.common.lr_sweep`). Reported: final eval accuracy
(per-bit for the bit tasks), steps to the task's threshold, the whole sweep, and the learning curves at the chosen
rates.

``--size full`` runs the paper's own set-up instead (:data:`benchmarks.common.FULL_SIZE_PLANS`): bit XOR, bit memory
(5 x 1000 bits) and ListOps at 512 tokens, at batch 4 with the official data formulation (fresh bit batches every
step, XOR as 0/1, input dropout 0.1; Rothermel et al.'s fixed ListOps loader, embedding N(0, 1)), for up to the
paper's steps to converge of the random init; the bit tasks stop once every eval bit is right. That is a GPU's job
(``--device cuda``); on a CPU, cap the length with ``--max-steps``.

    python -m benchmarks.pretrained_vs_random            # the CPU-sized run (about 11 min on 2 quiet cores)
    python -m benchmarks.pretrained_vs_random --quick    # a seconds-long smoke run
    python -m benchmarks.pretrained_vs_random --size full --device cuda --seeds 0 --confirm-seeds 1

``--inits`` trains one initialisation only (on another machine, or with its own ``--lrs``); ``--merge`` then reports
the saved runs of several result files together, without training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks import paper
from benchmarks.common import (
    FULL_SIZE_PLANS,
    TASK_PLANS,
    TaskPlan,
    curve_plot,
    environment,
    format_table,
    lr_sweep,
    open_journal,
    parse_sweep_args,
    select_plans,
    summarize_sweep,
    sweep_parser,
    write_json,
)

INITS = ("pretrained", "random")
PAPER_TASK = {task: paper.NAMES[paper.paper_task(task)] for task in ("bit_xor", "bit_memory", "listops", "digits")}
# The paper's test accuracy (%) and gradient steps to converge, FPT on GPT-2 vs random init.
PAPER: dict[str, dict[str, dict[str, float]]] = {
    task: {
        "accuracy": dict(zip(INITS, paper.TEST_ACCURACY[paper.paper_task(task)], strict=True)),
        "steps": dict(zip(INITS, paper.STEPS_TO_CONVERGE[paper.paper_task(task)], strict=True)),
    }
    for task in PAPER_TASK
}


def plans_for(args: argparse.Namespace) -> dict[str, TaskPlan]:
    """The task plans of this run (``--size``; ``--quick`` shrinks them, ``--max-steps`` caps them)."""
    sized = FULL_SIZE_PLANS if args.size == "full" else TASK_PLANS
    return select_plans({name: sized[name] for name in args.tasks}, args)


def _steps(values: list[int | None]) -> str:
    return ", ".join("not reached" if v is None else str(v) for v in values)


def _accuracies(values: list[float]) -> str:
    return ", ".join(f"{100 * v:.1f}" for v in values)


def report(
    args: argparse.Namespace,
    plans: dict[str, TaskPlan],
    results: list[dict[str, Any]],
    summary: dict[str, Any],
    machine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Print the table; write the JSON and the learning-curve plot. ``machine``: the environment the runs were
    trained in (default: this one)."""
    tasks: dict[str, Any] = {}
    rows = []
    for name, plan in plans.items():
        entry: dict[str, Any] = {
            "plan": {
                "description": plan.description,
                "task_kwargs": plan.task_kwargs,
                "steps": round(plan.steps * args.steps_scale),
                "batch_size": plan.batch_size,
                "lrs": list(args.lrs or plan.lrs),
                "threshold": plan.threshold,
            },
            "paper": {"task": PAPER_TASK[name], **PAPER[name]},
        }
        for init in args.inits:
            s = summary[f"{name}/{init}"]
            entry[init] = s
            sweep = " / ".join(
                f"{lr}: {100 * v['final_accuracy'][v['seeds'].index(s['selected_on_seeds'][0])]:.1f}"
                for lr, v in s["per_lr"].items()
            )
            rows.append(
                [
                    name,
                    init,
                    sweep,
                    f"{s['best_lr']:g}" + (" (edge)" if s["best_lr_at_edge_of_grid"] else ""),
                    f"{100 * s['final_accuracy_mean']:.1f} ({_accuracies(s['final_accuracy'])})",
                    f"{plan.threshold:.0%}: {_steps(s['steps_to_threshold'])}",
                    f"{PAPER_TASK[name]} {PAPER[name]['accuracy'][init]:g}",
                    f"{PAPER[name]['steps'][init]:.0e}",
                ]
            )
        if set(args.inits) == set(INITS):
            pre, ran = summary[f"{name}/pretrained"], summary[f"{name}/random"]
            entry["pretrained_minus_random"] = pre["final_accuracy_mean"] - ran["final_accuracy_mean"]
        tasks[name] = entry
    headers = [
        "task",
        "init",
        f"sweep: final % per lr (seed {args.seeds[0]})",
        "best lr",
        "final % mean (per seed)",
        "steps to threshold (per seed)",
        "paper final %",
        "paper steps",
    ]
    data: dict[str, Any] = {
        "benchmark": "pretrained_vs_random",
        "command": "python -m benchmarks.pretrained_vs_random " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "settings": {
            "model": "minilm",
            "tasks": list(plans),
            "inits": list(args.inits),
            "sweep_seeds": args.seeds,
            "confirm_seeds": args.confirm_seeds,
            "lrs": {name: list(args.lrs or plan.lrs) for name, plan in plans.items()},
            "steps_scale": args.steps_scale,
            "max_steps": args.max_steps,
            "size": args.size,
            "workers": args.workers,
            "optimizer": "Adam, constant lr, gradient clipping 1.0, dropout 0.1 (MiniLM's)",
            "model_kwargs": {name: plan.model_kwargs for name, plan in plans.items()},
            "stop_at": {name: plan.stop_at for name, plan in plans.items()},
            "trained": "layer norms, positions, input layer, output layer (FPT); attention and feed-forward frozen",
        },
        "environment": machine or environment(args.device) | {"workers": args.workers},
        "seconds": args.seconds,
        "tasks": tasks,
        "runs": results,
    }
    name = args.name
    json_path = write_json(name, data, args.out_dir)
    panels = [
        (f"{task}: {PAPER_TASK[task]}-like, threshold {plan.threshold:.0%}", [tasks[task][i] for i in args.inits])
        for task, plan in plans.items()
    ]
    size = "the paper's full-size set-up" if args.size == "full" else "CPU-sized tasks"
    png_path = curve_plot(
        name,
        panels,
        args.out_dir,
        title=f"Frozen MiniLM-L6 (FPT), {size}: pretrained vs random weights, each at its best learning rate",
    )
    print(f"\nFrozen pretrained vs frozen random MiniLM-L6 (FPT); {len(results)} runs in {args.seconds / 60:.1f} min")
    print(format_table(headers, rows))
    print(f"wrote {json_path} and {png_path}")
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see ``--help``)."""
    parser = sweep_parser(
        __doc__ or "", list(TASK_PLANS), "learning-rate grid (default: per task)", "pretrained_vs_random"
    )
    parser.add_argument(
        "--size",
        choices=("small", "full"),
        default="small",
        help="small: tasks sized for a 2-core CPU (default); full: the paper's set-up and sizes (a GPU's job)",
    )
    parser.add_argument(
        "--inits",
        nargs="+",
        choices=INITS,
        default=list(INITS),
        help="the initialisations to train (default both; one only: to run them on two machines, or with other grids)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        metavar="JSON",
        help="report the runs saved in these result files of this benchmark together (no training)",
    )
    parser.set_defaults(tasks=None, name=None)
    args = parse_sweep_args(parser, argv)
    sized = FULL_SIZE_PLANS if args.size == "full" else TASK_PLANS
    args.tasks = args.tasks or list(sized)
    missing = [task for task in args.tasks if task not in sized]
    if missing:
        parser.error(f"argument --tasks: {missing} have no --size {args.size} plan; choose from {list(sized)}")
    args.name = args.name or ("full_size" if args.size == "full" else "pretrained_vs_random")
    if args.resume and args.merge:
        parser.error("argument --resume: --merge trains nothing; leave out one of them")
    args.journal = None if args.merge else open_journal(parser, args)
    return args


def merge(args: argparse.Namespace) -> dict[str, Any]:
    """Report the runs saved in ``args.merge`` together, as one sweep: each init's rate chosen on the files' sweep
    seeds, the others counted as confirmation seeds."""
    saved = []
    for path in args.merge:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise SystemExit(f"error: argument --merge: cannot read {path}: {error}") from None
        if data.get("benchmark") != "pretrained_vs_random" or "runs" not in data:
            raise SystemExit(
                f"error: argument --merge: {path} is not a result file of benchmarks.pretrained_vs_random"
            )
        saved.append(data)
    sizes = {data["settings"].get("size", "small") for data in saved}
    if len(sizes) > 1:
        raise SystemExit(f"error: argument --merge: the files mix sizes {sorted(sizes)}; merge runs of one size")
    results = [run for data in saved for run in data["runs"]]
    args.size = sizes.pop()
    args.tasks = list(dict.fromkeys(run["task"] for run in results))
    args.inits = [init for init in INITS if any(run["init"] == init for run in results)]
    args.seeds = sorted({seed for data in saved for seed in data["settings"]["sweep_seeds"]})
    args.confirm_seeds = sorted({run["seed"] for run in results} - set(args.seeds))
    args.lrs, args.quick = None, all(data["quick"] for data in saved)
    args.seconds = sum(data["seconds"] for data in saved)
    sized = FULL_SIZE_PLANS if args.size == "full" else TASK_PLANS
    plans = {
        task: replace(
            sized[task],
            steps=max(run["steps"] for run in results if run["task"] == task),
            lrs=tuple(sorted({run["lr"] for run in results if run["task"] == task})),
        )
        for task in args.tasks
    }
    thresholds = {name: plan.threshold for name, plan in plans.items()}
    machine = saved[0]["environment"] | {"merged_from": [path.name for path in args.merge]}
    return report(args, plans, results, summarize_sweep(results, thresholds, select_seeds=args.seeds), machine)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sweep for every task and init, then report (or, with ``--merge``, report saved runs)."""
    args = parse_args(argv)
    if args.merge:
        return merge(args)
    torch.set_num_threads(1)
    plans = plans_for(args)
    runs = [
        run
        for plan in plans.values()
        for init in args.inits
        for run in plan.runs(
            init, args.seeds, init=init, lrs=args.lrs, steps_scale=args.steps_scale, device=args.device
        )
    ]
    thresholds = {name: plan.threshold for name, plan in plans.items()}
    start = time.perf_counter()
    results, summary = lr_sweep(runs, thresholds, args.confirm_seeds, args.workers, args.journal)
    args.seconds = time.perf_counter() - start
    data = report(args, plans, results, summary)
    args.journal.remove()
    return data


if __name__ == "__main__":
    main()
