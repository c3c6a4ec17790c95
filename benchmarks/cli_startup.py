"""How fast the recipes' command lines answer: ``python recipes/X.py --help`` for every recipe, in fresh processes.

Side by side in one run (medians of ``--repeats`` fresh processes each): the bare interpreter (``python -c pass``),
``import fpt_peft`` (light: registers FPT once peft loads), every recipe's ``--help``, and what a recipe's first
line cost before the arguments moved to :mod:`fpt_peft.arguments` (``import fpt_peft.training``: torch, peft,
transformers, accelerate) and ``import fpt_peft, peft`` (the registration itself).

    python -m benchmarks.cli_startup            # 5 processes per row (about a minute)
    python -m benchmarks.cli_startup --quick    # 1 process per row, two recipes
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, bar_plot, environment, format_table, write_json

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.py"))


def seconds(command: list[str], repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` fresh runs of ``command`` (each must exit 0)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time every row, print the table, write the JSON and the plot."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per row (default 5)")
    parser.add_argument("--quick", action="store_true", help="one process per row, two recipes")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="cli_startup", help="result file name")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    python = sys.executable
    rows: dict[str, list[str]] = {
        "python -c pass": [python, "-c", "pass"],
        "import fpt_peft": [python, "-c", "import fpt_peft"],
    }
    for recipe in RECIPES[:2] if args.quick else RECIPES:
        rows[f"recipes/{recipe}.py --help"] = [python, f"recipes/{recipe}.py", "--help"]
    rows["import fpt_peft, peft (registration)"] = [python, "-c", "import fpt_peft, peft"]
    rows["import fpt_peft.training (before)"] = [python, "-c", "import fpt_peft.training"]
    seconds([python, "-c", "import fpt_peft.training"], 1)  # warm the file cache once, untimed
    measured = {label: seconds(command, repeats) for label, command in rows.items()}
    medians = {label: statistics.median(times) for label, times in measured.items()}
    helps = [v for k, v in medians.items() if k.endswith("--help")]
    data = {
        "benchmark": "cli_startup",
        "command": "python -m benchmarks.cli_startup " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "repeats": repeats,
        "environment": environment("cpu"),
        "seconds": measured,
        "median_seconds": medians,
        "slowest_help_seconds": max(helps),
    }
    json_path = write_json(args.name, data, args.out_dir)
    png_path = bar_plot(args.name, [("seconds (median)", {"start-up": medians})], args.out_dir)
    print(format_table(["command", f"median s of {repeats}"], [[k, f"{v:.2f}"] for k, v in medians.items()]))
    print(f"slowest --help: {max(helps):.2f} s; wrote {json_path} and {png_path}")
    return data


if __name__ == "__main__":
    main()
