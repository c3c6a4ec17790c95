"""The paper's ablation on a frozen pretrained MiniLM: which trained groups make FPT work, lr swept per rung.

Lu et al. (2021) add the trained groups one at a time to a frozen pretrained GPT-2: output layer only ->
+ layer norms -> + input layer -> + positional embeddings (the last rung is FPT itself). Here the same ladder runs on
the packaged, really pretrained MiniLM-L6-H384 (attention and feed-forward always frozen; a group that is not trained
keeps its initial values: the pretrained layer norms and positions, the new input layer's random orthogonal
projection), on the offline 8x8 digits (the paper: MNIST) and a small bit memory (sizes in
:data:`benchmarks.common.TASK_PLANS`, the same as in ``benchmarks.pretrained_vs_random``).

Every rung is trained at every learning rate of the grid on the sweep seed(s); per task and rung the rate with the
best final eval accuracy is chosen and trained again on fresh confirmation seed(s)
(:func:`benchmarks.common.lr_sweep`).

    python -m benchmarks.ablation            # the full run (about 12 min on 2 quiet cores)
    python -m benchmarks.ablation --quick    # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Any

import torch

from benchmarks import paper
from benchmarks.common import (
    TASK_PLANS,
    TaskPlan,
    curve_plot,
    environment,
    format_table,
    lr_sweep,
    open_journal,
    parse_sweep_args,
    select_plans,
    sweep_parser,
    write_json,
)

ABLATION_TASKS = ("digits", "bit_memory")
RUNGS: dict[str, dict[str, bool]] = {
    "output only": {"train_output": True, "train_layer_norms": False, "train_input": False, "train_positions": False},
    "+ layer norms": {"train_output": True, "train_layer_norms": True, "train_input": False, "train_positions": False},
    "+ input": {"train_output": True, "train_layer_norms": True, "train_input": True, "train_positions": False},
    "+ positions": {"train_output": True, "train_layer_norms": True, "train_input": True, "train_positions": True},
}
"""The ladder: each rung trains the groups of the one before plus one more (attention, feed-forward always frozen)."""
ABLATION_LRS = (1e-3, 3e-3, 1e-2)
"""The grid of every rung: a step higher than :data:`benchmarks.common.TASK_PLANS`' (3e-4 to 3e-3), where the
pretrained-vs-random sweep found 3e-3 best for both tasks, at the top edge, and 3e-4 never best."""
PAPER_TASK = {task: paper.NAMES[paper.paper_task(task)] for task in ("digits", "bit_memory")}
PAPER = paper.ABLATION  # the paper's ablation (test accuracy, %), frozen pretrained GPT-2, one group added per rung


def plans_for(args: argparse.Namespace) -> dict[str, TaskPlan]:
    """The task plans of this run (``--quick`` shrinks them)."""
    plans = {name: replace(TASK_PLANS[name], lrs=ABLATION_LRS) for name in args.tasks}
    return select_plans(plans, args)


def _steps(values: list[int | None]) -> str:
    return ", ".join("not reached" if v is None else str(v) for v in values)


def report(
    args: argparse.Namespace, plans: dict[str, TaskPlan], results: list[dict[str, Any]], summary: dict[str, Any]
) -> dict[str, Any]:
    """Print the table; write the JSON and the plot (curves per task, final accuracy per rung beside the paper's)."""
    tasks: dict[str, Any] = {}
    rows = []
    for name, plan in plans.items():
        paper = PAPER[PAPER_TASK[name]]
        entry: dict[str, Any] = {
            "plan": {
                "description": plan.description,
                "task_kwargs": plan.task_kwargs,
                "steps": round(plan.steps * args.steps_scale),
                "batch_size": plan.batch_size,
                "lrs": list(args.lrs or plan.lrs),
                "threshold": plan.threshold,
            },
            "paper": {"task": PAPER_TASK[name], "accuracy": dict(zip(RUNGS, paper, strict=True))},
            "rungs": {},
        }
        for index, rung in enumerate(RUNGS):
            s = summary[f"{name}/{rung}"]
            s["flags"] = RUNGS[rung]
            s["trainable_parameters"] = next(
                r["trainable_parameters"] for r in results if r["task"] == name and r["label"] == rung
            )
            entry["rungs"][rung] = s
            sweep = " / ".join(
                f"{lr}: {100 * v['final_accuracy'][v['seeds'].index(s['selected_on_seeds'][0])]:.1f}"
                for lr, v in s["per_lr"].items()
            )
            rows.append(
                [
                    name,
                    rung,
                    s["trainable_parameters"],
                    sweep,
                    f"{s['best_lr']:g}" + (" (edge)" if s["best_lr_at_edge_of_grid"] else ""),
                    f"{100 * s['final_accuracy_mean']:.1f} ("
                    + ", ".join(f"{100 * v:.1f}" for v in s["final_accuracy"])
                    + ")",
                    f"{plan.threshold:.0%}: {_steps(s['steps_to_threshold'])}",
                    f"{PAPER_TASK[name]} {paper[index]:g}",
                ]
            )
        tasks[name] = entry
    headers = [
        "task",
        "trained",
        "trainable params",
        f"sweep: final % per lr (seed {args.seeds[0]})",
        "best lr",
        "final % mean (per seed)",
        "steps to threshold (per seed)",
        "paper %",
    ]
    data: dict[str, Any] = {
        "benchmark": "ablation",
        "command": "python -m benchmarks.ablation " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "settings": {
            "model": "minilm",
            "init": "pretrained",
            "tasks": list(plans),
            "rungs": RUNGS,
            "sweep_seeds": args.seeds,
            "confirm_seeds": args.confirm_seeds,
            "lrs": {name: list(args.lrs or plan.lrs) for name, plan in plans.items()},
            "steps_scale": args.steps_scale,
            "workers": args.workers,
            "optimizer": "Adam, constant lr, gradient clipping 1.0, dropout 0.1 (MiniLM's)",
        },
        "environment": environment("cpu") | {"workers": args.workers},
        "seconds": args.seconds,
        "paper_all_tasks": {task: dict(zip(RUNGS, values, strict=True)) for task, values in PAPER.items()},
        "tasks": tasks,
        "runs": results,
    }
    json_path = write_json(args.name, data, args.out_dir)
    panels = [
        (f"{task} ({PAPER_TASK[task]}-like), threshold {plan.threshold:.0%}", list(tasks[task]["rungs"].values()))
        for task, plan in plans.items()
    ]
    bars: dict[str, dict[str, float]] = {rung: {} for rung in RUNGS}
    for task in plans:
        for rung in RUNGS:
            bars[rung][f"{task} (ours)"] = tasks[task]["rungs"][rung]["final_accuracy_mean"]
    for task in plans:
        for index, rung in enumerate(RUNGS):
            bars[rung][f"{PAPER_TASK[task]} (paper, GPT-2)"] = PAPER[PAPER_TASK[task]][index] / 100
    png_path = curve_plot(
        args.name,
        panels,
        args.out_dir,
        title="Frozen pretrained MiniLM-L6: trained groups added one at a time (each rung at its best learning rate)",
        bars=("final eval accuracy", bars),
    )
    print(f"\nAblation on frozen pretrained MiniLM-L6; {len(results)} runs in {args.seconds / 60:.1f} min")
    print(format_table(headers, rows))
    print(f"wrote {json_path} and {png_path}")
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see ``--help``)."""
    parser = sweep_parser(__doc__ or "", list(ABLATION_TASKS), "lr grid (default 1e-3 3e-3 1e-2)", "ablation")
    args = parse_sweep_args(parser, argv)
    args.journal = open_journal(parser, args)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sweep for every task and rung, then report."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    plans = plans_for(args)
    runs = [
        run
        for plan in plans.values()
        for rung, flags in RUNGS.items()
        for run in plan.runs(
            rung, args.seeds, flags=flags, lrs=args.lrs, steps_scale=args.steps_scale, device=args.device
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
