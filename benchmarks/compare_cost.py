"""How long ``fpt-peft-compare`` takes with its default arms and settings on a 569-row, 30-feature table.

The table is scikit-learn's breast-cancer data (569 rows, 30 numeric features, 2 classes), written as a CSV the way
a user would have it. The comparison runs with every default (3 seeds, 3 rates, 100 steps of batch 16, MiniLM;
arms ``fpt_pretrained fpt_random no_lm majority logistic_regression random_forest``) and one worker; the result
file gets its wall time, the number of runs and the comparison's table.

    python -m benchmarks.compare_cost              # the default comparison (about 15 minutes on 2 CPU cores)
    python -m benchmarks.compare_cost --quick      # 1 seed, 1 rate, 4 steps: checks the benchmark runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, bar_plot, environment, format_table, write_json
from fpt_peft import compare


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison, print its wall time and write ``<out-dir>/<name>.json``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 rate, 4 steps")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="compare_cost", help="result file name")
    args = parser.parse_args(argv)
    from sklearn.datasets import load_breast_cancer

    with tempfile.TemporaryDirectory() as scratch:
        table = Path(scratch) / "breast_cancer.csv"
        load_breast_cancer(as_frame=True).frame.to_csv(table, index=False)
        options = ["--data", str(table), "--label-column", "target", "--out-dir", str(Path(scratch) / "compare")]
        if args.quick:
            options += ["--seeds", "1", "--lrs", "1e-3", "--max-steps", "4", "--eval-every", "2"]
        started = time.perf_counter()
        result = compare.main(options)
        seconds = time.perf_counter() - started
    data = {
        "benchmark": "compare_cost",
        "command": "python -m benchmarks.compare_cost " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "data": "breast_cancer.csv (scikit-learn): 569 rows, 30 features, 2 classes; test split 0.2 (seed 0)",
        "wall_seconds": seconds,
        "runs": len(result["runs"]),
        "settings": {k: v for k, v in result["settings"].items() if k != "data"},
        "arms": result["arms"],
        "differences": result["differences"],
        "environment": environment("cpu"),
    }
    path = write_json(args.name, data, args.out_dir)
    means = {arm: row["mean"] for arm, row in result["arms"].items()}
    bar_plot(args.name, [("test accuracy, mean over seeds", {"arms": means})], args.out_dir)
    rows = [[arm, row["mean"], *(row["ci95"] or ["-", "-"])] for arm, row in result["arms"].items()]
    print(format_table(["arm", "test accuracy", "95% low", "95% high"], rows))
    print(f"{len(result['runs'])} runs in {seconds / 60:.1f} minutes; wrote {path} and its plot")
    return data


if __name__ == "__main__":
    main()
