"""Time-series classification: FPT (pretrained vs random MiniLM) against the field's classifiers, on UCR/UEA data.

Side by side in one run, on the archives' own train/test splits of six datasets aeon bundles (offline):

- FPT on the packaged, really pretrained MiniLM-L6 (``init="pretrained"``) and on the same architecture with random
  weights (``init="random"``), frozen alike, each with its learning rate swept (:func:`benchmarks.common.lr_sweep`,
  the best final test accuracy per dataset and init; ``--confirm-seeds`` reruns the chosen rate on fresh seeds). The
  choice is made on the test split, as GPT4TS's scripts choose their epoch on it, so FPT's figures are optimistic;
- aeon's MiniRocket (10,000 kernels and a ridge classifier) and 1-NN DTW (full window), which need no tuning.

Reported per dataset and method: test accuracy, training wall time and trained parameters. A second part measures
the input-handling options (per-instance normalisation, channels in one token or one token each) on the two
multivariate datasets. Published numbers (UCR/UEA archive baselines, MiniRocket, GPT4TS) are in :data:`PUBLISHED`.

    python -m benchmarks.time_series            # the full run (about 30 min on 2 cores)
    python -m benchmarks.time_series --quick    # a smoke run of a minute or so
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    RESULTS_DIR,
    CurveRun,
    environment,
    format_table,
    lr_sweep,
    run_curves,
    write_json,
)
from fpt_peft.data import time_series

INITS = ("pretrained", "random")


@dataclass(frozen=True)
class SeriesPlan:
    """One dataset of the benchmark: its patching (about 10-60 tokens per series) and training length."""

    dataset: str
    patch_len: int
    stride: int
    steps: int
    batch_size: int = 16

    def run(self, init: str, lr: float, seed: int, **options: Any) -> CurveRun:
        """The FPT training run of this dataset for ``init`` at ``lr``; ``options`` override the input handling."""
        kwargs = {"dataset": self.dataset, "patch_len": self.patch_len, "stride": self.stride, **options}
        return CurveRun(
            task="time_series",
            label=f"{self.dataset}:{init}",
            lr=lr,
            task_kwargs=kwargs,
            init=init,
            seed=seed,
            steps=self.steps,
            batch_size=self.batch_size,
            eval_every=max(1, self.steps // 2),
        )


PLANS = {
    "JapaneseVowels": SeriesPlan("JapaneseVowels", patch_len=4, stride=2, steps=300),  # 12 channels, 7-29 steps
    "BasicMotions": SeriesPlan("BasicMotions", patch_len=8, stride=4, steps=300, batch_size=8),  # 6 x 100, 40 train
    "GunPoint": SeriesPlan("GunPoint", patch_len=16, stride=8, steps=300, batch_size=8),  # 150 steps, 50 train
    "ItalyPowerDemand": SeriesPlan("ItalyPowerDemand", patch_len=4, stride=2, steps=300, batch_size=8),  # 24 steps
    "ArrowHead": SeriesPlan("ArrowHead", patch_len=16, stride=8, steps=300, batch_size=8),  # 251 steps, 36 train
    "OSULeaf": SeriesPlan("OSULeaf", patch_len=32, stride=16, steps=250),  # 427 steps, 200 train
}
LRS = (1e-3, 3e-3)

# Test accuracy published for the same datasets and splits. UCR: the archive's DataSummary.csv (1 - error rate;
# https://www.cs.ucr.edu/~eamonn/time_series_data_2018/); MiniRocket: Dempster et al. (2021), mean over 30 resamples
# (github.com/angus924/minirocket, results/results_ucr109_mean.csv); UEA 1-NN DTW: the archive baselines as tabulated
# in github.com/White-Link/UnsupervisedScalableRepresentationLearningTimeSeries (results_uea.csv, "DTW"); GPT4TS:
# Zhou et al. (2023), Table 25 (GPT2(6), 6 of GPT-2's 12 blocks, test split used for model selection).
PUBLISHED: dict[str, dict[str, float]] = {
    "JapaneseVowels": {"1-NN DTW": 0.949, "GPT4TS": 0.986},
    "BasicMotions": {"1-NN DTW": 0.975},
    "GunPoint": {"1-NN DTW": 0.9067, "1-NN ED": 0.9133, "MiniRocket": 0.9924},
    "ItalyPowerDemand": {"1-NN DTW": 0.9504, "1-NN ED": 0.9553, "MiniRocket": 0.9596},
    "ArrowHead": {"1-NN DTW": 0.7029, "1-NN ED": 0.8000, "MiniRocket": 0.8810},
    "OSULeaf": {"1-NN DTW": 0.5909, "1-NN ED": 0.5207, "MiniRocket": 0.9576},
}


def _panel(series: list[np.ndarray], length: int) -> np.ndarray:
    """Series as one ``(n, channels, length)`` array, each end padded with its last value (for unequal lengths)."""
    return np.stack([np.pad(x, ((0, 0), (0, length - x.shape[-1])), mode="edge") for x in series])


def run_baselines(dataset: str, quick: bool) -> dict[str, dict[str, Any]]:
    """aeon's MiniRocket and 1-NN DTW on ``dataset``: test accuracy, fit + predict seconds, trained parameters.

    1-NN DTW takes series of unequal length as they are; MiniRocket needs one length, so such series are padded with
    their last value to the longest (JapaneseVowels).
    """
    from aeon.classification.convolution_based import MiniRocketClassifier
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    from fpt_peft.data.time_series import load_archive

    train_x, train_y = load_archive(dataset, "train")
    test_x, test_y = load_archive(dataset, "test")
    if quick:
        every, every_test = max(1, len(train_x) // 20), max(1, len(test_x) // 20)  # 20 series, classes spread
        train_x, train_y, test_x, test_y = (
            train_x[::every],
            train_y[::every],
            test_x[::every_test],
            test_y[::every_test],
        )
    lengths = {x.shape[-1] for x in train_x + test_x}
    longest = max(lengths)
    classifiers: dict[str, Any] = {
        "MiniRocket": MiniRocketClassifier(n_kernels=1_000 if quick else 10_000, random_state=0),
        "1-NN DTW": KNeighborsTimeSeriesClassifier(distance="dtw", n_neighbors=1),
    }
    results: dict[str, dict[str, Any]] = {}
    for name, classifier in classifiers.items():
        as_list = name == "1-NN DTW" and len(lengths) > 1
        fit_x = train_x if as_list else _panel(train_x, longest)
        predict_x = test_x if as_list else _panel(test_x, longest)
        start = time.perf_counter()
        classifier.fit(fit_x, train_y)
        predictions = classifier.predict(predict_x)
        seconds = time.perf_counter() - start
        results[name] = {
            "accuracy": float(np.mean(predictions == test_y)),
            "seconds": seconds,
            "trained_parameters": _trained_parameters(name, classifier),
            "note": "padded with last values" if len(lengths) > 1 and not as_list else "",
        }
        print(f"{dataset:<17} {name:<11} accuracy {results[name]['accuracy']:.3f} ({seconds:.1f} s)", flush=True)
    return results


def _trained_parameters(name: str, classifier: Any) -> int:
    if name == "MiniRocket":  # the ridge classifier on the kernel features (the kernels are fixed, not trained)
        ridge = classifier.pipeline_.steps[-1][1]
        return int(ridge.coef_.size + np.size(ridge.intercept_))
    return 0  # 1-NN stores the training set and trains nothing


def input_handling_runs(datasets: list[str], quick: bool) -> list[CurveRun]:
    """The input options on the multivariate ``datasets`` (pretrained, lr 1e-3, seed 0): normalisation on or off,
    and, on BasicMotions, channels in one token or one token each (on JapaneseVowels one token per channel makes 12
    times the tokens, too slow for 2 cores)."""
    runs = []
    for dataset in datasets:
        plan = replace(PLANS[dataset], steps=4) if quick else PLANS[dataset]
        for normalize in (True, False):
            for channels in ("mix", "separate") if dataset == "BasicMotions" else ("mix",):
                run = plan.run("pretrained", 1e-3, 0, normalize=normalize, channels=channels)
                runs.append(replace(run, label=f"{dataset}:{'norm' if normalize else 'raw'}+{channels}"))
    return runs


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def report(args: argparse.Namespace, datasets: dict[str, Any], inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Print the tables; write the JSON and the plot."""
    methods = ("FPT pretrained", "FPT random", "MiniRocket", "1-NN DTW")
    rows = []
    for name, entry in datasets.items():
        for method in methods:
            m = entry["methods"][method]
            published = PUBLISHED[name].get(method.replace("FPT pretrained", "GPT4TS"))
            rows.append(
                [
                    name,
                    method,
                    _percent(m["accuracy"])
                    + (f" ({', '.join(_percent(a) for a in m['per_seed'])})" if "per_seed" in m else ""),
                    m.get("best_lr", ""),
                    f"{m['seconds']:.1f}",
                    f"{m['trained_parameters']:,}",
                    _percent(published),
                ]
            )
    headers = ["dataset", "method", "test acc. % (per seed)", "lr", "train s", "trained params", "published %"]
    input_rows = [
        [r["label"].split(":")[0], r["label"].split(":")[1], _percent(r["final_accuracy"]), f"{r['seconds']:.0f}"]
        for r in inputs
    ]
    data: dict[str, Any] = {
        "benchmark": "time_series",
        "command": "python -m benchmarks.time_series " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "settings": {
            "model": "minilm",
            "plans": {name: vars(plan) for name, plan in PLANS.items() if name in datasets},
            "lrs": list(args.lrs),
            "sweep_seeds": args.seeds,
            "confirm_seeds": args.confirm_seeds,
            "optimizer": "Adam, constant lr, gradient clipping 1.0, dropout 0.1 (MiniLM's)",
            "input_handling": {  # the loader's own defaults, which every run of the main table uses
                name: param.default
                for name, param in inspect.signature(time_series).parameters.items()
                if name in ("normalize", "channels")
            },
        },
        "environment": environment("cpu") | {"workers": args.workers},
        "seconds": args.seconds,
        "published": PUBLISHED,
        "datasets": datasets,
        "input_handling": inputs,
    }
    json_path = write_json(args.name, data, args.out_dir)
    groups = {name: {m: entry["methods"][m]["accuracy"] for m in methods} for name, entry in datasets.items()}
    if not datasets:
        print(format_table(["dataset", "options", "test acc. %", "train s"], input_rows))
        print(f"wrote {json_path}")
        return data
    png_path = plot(args.name, groups, args.out_dir)
    print(f"\nTime-series classification, {args.seconds / 60:.1f} min")
    print(format_table(headers, rows))
    if input_rows:
        print("\nInput handling (FPT pretrained, lr 1e-3, seed 0):")
        print(format_table(["dataset", "options", "test acc. %", "train s"], input_rows))
    print(f"wrote {json_path} and {png_path}")
    return data


def plot(name: str, groups: dict[str, dict[str, float]], out_dir: Path = RESULTS_DIR) -> Path:
    """Grouped bars of test accuracy, one group per dataset, written to ``<out_dir>/<name>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(m for values in groups.values() for m in values))
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        xs = [g + (i - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [values[method] for values in groups.values()], width, label=method)
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", ncol=len(methods))
    ax.set_title("UCR/UEA test accuracy: FPT on MiniLM-L6 (pretrained, random) vs MiniRocket and 1-NN DTW", fontsize=9)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(PLANS), default=None, help="default: all six")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("compare", "inputs"),
        default=["compare", "inputs"],
        help="compare: FPT vs the classifiers; inputs: the input-handling options (default: both)",
    )
    parser.add_argument("--lrs", nargs="+", type=float, default=list(LRS), help="learning-rate grid of FPT")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the sweep (default 0)")
    parser.add_argument(
        "--confirm-seeds", nargs="*", type=int, default=[], help="fresh seeds run at each chosen rate (default none)"
    )
    parser.add_argument("--workers", type=int, default=2, help="training processes, one thread each (default 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 steps, one lr, one seed, 20 series")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="time_series", help="result file name")
    args = parser.parse_args(argv)
    if args.quick:
        args.lrs, args.seeds, args.confirm_seeds, args.workers = [1e-3], [0], [], 1
        args.datasets = args.datasets or ["BasicMotions"]
    args.datasets = args.datasets or list(PLANS)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Baselines, then the FPT sweeps and the input-handling runs, then the report."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    datasets: dict[str, Any] = {}
    if "compare" in args.parts:
        for name in args.datasets:
            datasets[name] = {"methods": run_baselines(name, args.quick)}
        runs = []
        for name in args.datasets:
            plan = replace(PLANS[name], steps=4) if args.quick else PLANS[name]
            runs += [plan.run(init, lr, seed) for init in INITS for lr in args.lrs for seed in args.seeds]
        results, summary = lr_sweep(runs, {"time_series": 1.0}, args.confirm_seeds, args.workers)
        for name in args.datasets:
            for init in INITS:
                s = summary[f"time_series/{name}:{init}"]
                trainable = next(r["trainable_parameters"] for r in results if r["label"] == f"{name}:{init}")
                datasets[name]["methods"][f"FPT {init}"] = {
                    "accuracy": s["final_accuracy_mean"],
                    "per_seed": s["final_accuracy"],
                    "best_lr": f"{s['best_lr']:g}" + (" (edge)" if s["best_lr_at_edge_of_grid"] else ""),
                    "sweep": s["per_lr"],
                    "seconds": float(np.median(s["seconds"])),
                    "trained_parameters": trainable,
                }
    inputs = []
    if "inputs" in args.parts:
        multivariate = [d for d in args.datasets if d in ("JapaneseVowels", "BasicMotions")]
        inputs = run_curves(input_handling_runs(multivariate, args.quick), args.workers)
    args.seconds = time.perf_counter() - start
    return report(args, datasets, inputs)


if __name__ == "__main__":
    main()
