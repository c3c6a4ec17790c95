"""The paper's Table 1 beside ours: each paper task with ``--preset paper``, frozen pretrained (FPT) and frozen random.

Each cell is one run of the task's recipe (``python recipes/X.py --preset paper --init {pretrained,random}``, or the
launcher given with ``--launcher``), its output kept under ``--runs-dir`` (a second run of this script continues or
re-reads finished runs: ``--resume-if-possible``). A cell whose model or data cannot be reached from this machine
(the recipe ends with its one-line ``error:``, exit status 2) is marked not run, with that reason; any other failure
stops the script. Test accuracy in % (per-bit accuracy for the bit tasks), on each preset's evaluation split.

    python -m benchmarks.paper_table                            # the paper's set-up (gpt2, datasets from the Hub)
    python -m benchmarks.paper_table --max-steps 20000          # shorter than the official 1e6 steps
    accelerate config && python -m benchmarks.paper_table --launcher "accelerate launch"   # e.g. on GPUs
    python -m benchmarks.paper_table --quick                    # offline smoke run: packaged MiniLM, 20 steps
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.paper import TEST_ACCURACY

ROOT = Path(__file__).resolve().parents[1]
PAPER = TEST_ACCURACY  # Table 1 of Lu et al. (2021): FPT (GPT-2) and the same network frozen random, test %
INITS = ("pretrained", "random")
METRIC = {"bit_memory": "per_bit_accuracy", "bit_xor": "per_bit_accuracy"}  # the others: accuracy


def run_cell(task: str, init: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run (or continue) one cell; returns its result or why it was not run."""
    out = args.runs_dir / f"{task}-{init}"
    command = [*shlex.split(args.launcher), f"recipes/{task}.py", "--preset", "paper", "--init", init]
    command += ["--output-dir", str(out), "--resume-if-possible", "--seed", str(args.seed)]
    command += ["--model", args.model] if args.model else []
    command += ["--max-steps", str(args.max_steps)] if args.max_steps else []
    command += [*args.task_args.get(task, [])]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    shown = " ".join(shlex.quote(part) for part in command)
    if done.returncode == 2:
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        reason = errors[-1].split("error:", 1)[1].strip() if errors else done.stderr.strip()[-300:]
        return {"run": False, "reason": reason, "command": shown}
    if done.returncode != 0:
        raise RuntimeError(f"{shown} failed (exit status {done.returncode}):\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    accuracy = 100 * float(metrics[METRIC.get(task, "accuracy")])
    return {
        "run": True,
        "accuracy": accuracy,
        "steps": int(metrics["step"]),
        "seconds": seconds,
        "differences": metrics.get("preset_differences"),
        "command": shown,
    }


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Paper beside ours, one row per task; cells not run are marked with a footnote number."""
    from benchmarks.common import format_table

    notes: list[str] = []
    rows = []
    for task, cells in results.items():
        row: list[object] = [task]
        for i, init in enumerate(INITS):
            cell = cells[init]
            if cell["run"]:
                ours = f"{cell['accuracy']:.1f} ({cell['steps']} steps)"
                if cell["differences"]:
                    notes.append(
                        f"[{len(notes) + 1}] {task}, {init}: differs from the paper in: {cell['differences']}"
                    )
                    ours += f" [{len(notes)}]"
            else:
                notes.append(f"[{len(notes) + 1}] {task}, {init}: not run: {cell['reason']}")
                ours = f"not run [{len(notes)}]"
            row += [PAPER[task][i], ours]
        rows.append(row)
    headers = ["task", "paper FPT", "ours FPT", "paper random", "ours random"]
    return format_table(headers, rows) + ("\n\n" + "\n".join(notes) if notes else "")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every cell, print the table, write ``<out-dir>/paper_table.json`` (or the ``--quick`` variant's)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=list(PAPER), default=list(PAPER))
    parser.add_argument("--model", default=None, help="Backbone instead of the preset's gpt2.")
    parser.add_argument("--max-steps", type=int, default=None, help="Instead of the preset's 1e6 steps.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--launcher", default=f"{shlex.quote(sys.executable)}", help="Command that runs a recipe.")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "outputs" / "paper_table", help="The runs' outputs.")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results", help="JSON and plot.")
    parser.add_argument("--name", default=None)
    parser.add_argument(
        "--quick", action="store_true", help="Packaged MiniLM, 20 steps, small evaluation sets: a smoke run."
    )
    args = parser.parse_args(argv)
    args.task_args = {}
    if args.quick:
        args.model = args.model or "minilm"
        args.max_steps = args.max_steps or 20
        small = ["--num-eval", "64", "--eval-every", "0", "--save-every", "0"]
        args.task_args = {
            "bit_xor": small,
            "bit_memory": small,
            "listops": ["--num-train", "64", "--num-eval", "16", "--max-tokens", "64"],
        }
    from benchmarks.common import bar_plot, environment, write_json

    results = {task: {init: run_cell(task, init, args) for init in INITS} for task in args.tasks}
    print(table(results))
    name = args.name or ("paper_table-quick" if args.quick else "paper_table")
    panels = [
        (
            f"accuracy (%), frozen {init}",
            {
                task: {"paper": PAPER[task][i], "ours": cells[init]["accuracy"]}
                for task, cells in results.items()
                if cells[init]["run"]
            },
        )
        for i, init in enumerate(INITS)
    ]
    bar_plot(name, panels, args.out_dir, title=f"Table 1 of Lu et al. (2021) beside ours ({args.model or 'gpt2'})")
    data = {
        "benchmark": "paper_table",
        "quick": args.quick,
        "paper": PAPER,
        "results": results,
        "model": args.model or "gpt2",
        "max_steps": args.max_steps,
        "environment": environment("cpu"),
    }
    write_json(name, data, args.out_dir)
    return data


if __name__ == "__main__":
    main()
