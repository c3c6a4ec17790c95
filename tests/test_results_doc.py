"""docs/results.md against the result files it cites: every number in its tables, and the ranges and ratios its prose
states beside them, must equal the JSON under ``benchmarks/results/`` at the precision the doc shows.

Each checked table has an entry in ``TABLES``: the strings by which its section cites its files, and a function that
gives, for one row, the file's values behind each cell's numbers, in the order the cell shows them. A cell's numbers
are compared one by one, each to the precision it is shown with (``83.9`` to within 0.05, ``1,280`` to within 0.5,
``1e-3`` exactly); ``not reached`` stands for ``None``. A column with numbers that no function covers fails, unless
the entry names it in ``unchecked`` with the reason. Tables with no figures from a file are in ``EXCLUDED``, each with
its reason; a table in neither list fails. ``PROSE`` holds the sentences checked the same way.

Pure parsing: no training, no timing.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest

from .training_utils import ROOT

DOC = ROOT / "docs" / "results.md"
RESULTS = ROOT / "benchmarks" / "results"

# A number as the doc writes it: optional sign, thousands commas, decimals, an exponent ("1e-3"). Not part of a word
# ("fp32", "GPT4TS") or of a hyphenated name ("CIFAR-10"); a range "1.00-1.01" gives two numbers.
NUMBER = r"(?<![\w.])(?<![A-Za-z]-)[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[+-]?\d+)?"
TOKEN = re.compile(f"{NUMBER}|not reached")
NOT_RUN = "not run"  # an expected cell: the file has no such run, and the doc must say so

Row = dict[str, str]
Expected = list[float | None]


# ------------------------------------------------------------------------------------------------ reading the doc
@dataclass
class Table:
    """One Markdown table: its section heading, column names and rows of cells."""

    heading: str
    columns: list[str]
    rows: list[list[str]]

    @property
    def name(self) -> str:
        return f"table '{self.columns[0]} | {self.columns[1]} | ...' under '{self.heading}'"

    def label(self, cells: list[str]) -> str:
        """The row's name: its first cell, with the second where the first repeats in this table."""
        firsts = [row[0] for row in self.rows]
        return cells[0] if firsts.count(cells[0]) == 1 else f"{cells[0]} / {cells[1]}"


def _columns(header: str) -> list[str]:
    """Column names; a bare ``x`` (a ratio) is named after the column before it, so that names are unique."""
    names: list[str] = []
    for cell in _cells(header):
        names.append(f"x {names[-1]}" if cell == "x" else cell)
    return names


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


@cache
def parse_doc() -> tuple[dict[str, str], list[Table]]:
    """The doc's sections (heading -> text) and tables, outside code blocks."""
    sections: dict[str, list[str]] = {"": []}
    tables: list[Table] = []
    heading, block, fenced = "", [], False
    for line in [*DOC.read_text().splitlines(), ""]:
        fenced ^= line.startswith("```")
        if line.startswith("|") and not fenced:
            block.append(line)
        elif block:
            tables.append(Table(heading, _columns(block[0]), [_cells(b) for b in block[2:]]))
            block = []
        if line.startswith("#") and not fenced:
            heading = line.lstrip("#").strip()
            sections[heading] = []
        sections[heading].append(line)
    return {h: "\n".join(lines) for h, lines in sections.items()}, tables


def section(prefix: str) -> str:
    """The text of the one section whose heading starts with ``prefix``."""
    (text,) = [text for heading, text in parse_doc()[0].items() if heading and heading.startswith(prefix)]
    return text


def numbers(text: str) -> list[str]:
    """The numbers (and ``not reached``) in a cell or sentence, as written."""
    return TOKEN.findall(text)


def agrees(shown: str, value: float | None) -> bool:
    """Whether the doc's ``shown`` number is ``value`` at the precision shown (either rounding of a half passes)."""
    if shown == "not reached" or value is None:
        return shown == "not reached" and value is None
    number = float(shown.replace(",", ""))
    if "e" in shown:
        return math.isclose(number, value, rel_tol=1e-9)
    half_unit = 0.5 * 10.0 ** -len(shown.partition(".")[2])
    return abs(number - value) <= half_unit + 1e-9 * max(1.0, abs(value))


def mismatch(shown: list[str], expected: Expected) -> bool:
    return len(shown) != len(expected) or not all(map(agrees, shown, expected))


def show(values: Expected) -> str:
    return "[" + ", ".join("not reached" if v is None else f"{v:.6g}" for v in values) + "]"


# ------------------------------------------------------------------------------------------ reading the results
@cache
def load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def mib(size: float) -> float:
    return size / 2**20


def span(values: Iterable[float]) -> Expected:
    """A range as the doc writes it, ``low-high``, or one value when all are equal."""
    values = sorted(values)
    return [values[0]] if values[0] == values[-1] else [values[0], values[-1]]


def paired(a: dict[str, Any], b: dict[str, Any]) -> Expected:
    """Step time of set-up ``a`` over ``b``, taken within each round: the median over rounds, then the range."""
    ratios = [x / y for x, y in zip(a["step_ms_rounds"], b["step_ms_rounds"], strict=True)]
    return [statistics.median(ratios), min(ratios), max(ratios)]


def at_lr(summary: dict[str, Any], lr: float) -> dict[str, Any]:
    """A sweep summary's entry for one learning rate."""
    (entry,) = [entry for key, entry in summary["per_lr"].items() if float(key) == lr]
    return entry


def seed0(entry: dict[str, Any]) -> float:
    """The final accuracy of seed 0 in a per-lr entry."""
    return entry["final_accuracy"][entry["seeds"].index(0)]


def per_lr_seed0(summary: dict[str, Any]) -> Expected:
    """Seed 0's final accuracy (%) at each learning rate of the grid, smallest rate first."""
    return [pct(seed0(at_lr(summary, lr))) for lr in sorted(summary["learning_rates"])]


def chosen(summary: dict[str, Any]) -> Expected:
    """``mean (seed 0, seed 1)`` at the chosen rate, in %."""
    return [pct(summary["final_accuracy_mean"]), *map(pct, summary["final_accuracy"])]


def first_step(run: dict[str, Any], threshold: float) -> int | None:
    """The first evaluation step at which a run's accuracy reached ``threshold``."""
    return next((s for s, a in zip(run["eval_steps"], run["accuracy"], strict=True) if a >= threshold), None)


def collapsed(steps: list[int | None]) -> Expected:
    """Steps per seed; one ``not reached`` when no seed reached it."""
    return [None] if all(s is None for s in steps) else list(steps)


TASKS = {"bit XOR": "bit_xor", "bit memory": "bit_memory", "ListOps": "listops", "digits": "digits"}
TASKS["digits (MNIST)"] = "digits"


# --------------------------------------------------------------------------------------------------- the tables
def cost_cpu(name: str) -> Callable[[Row], dict[str, Any]]:
    """The CPU cost tables: one row per set-up of ``variants``."""

    def expect(row: Row) -> dict[str, Any]:
        v = load(name)["variants"][row["set-up"]]
        memory = v["memory"]
        return {
            "trainable params": [memory["trainable_parameters"]],
            "step ms": [v["step_ms"]],
            "x fpt_peft": [v["step_time_ratio"]],
            "fwd ms": [v["forward_ms"]],
            "bwd ms": [v["backward_ms"]],
            "Adam ms": [v["optimizer_ms"]],
            "GFLOP fwd+bwd": [v["forward_gflop"], v["backward_gflop"]],
            "x GFLOP fwd+bwd": [v["flop_ratio"]],
            "params+grads+Adam MiB": [mib(memory["train_state_bytes"])],
            "x params+grads+Adam MiB": [v["train_state_ratio"]],
            "saved activations MiB": [mib(v["saved_activation_bytes"])],
            "x saved activations MiB": [v["saved_activation_ratio"]],
            "RSS peak over model MiB": [mib(memory["rss_training_peak_delta_bytes"])],
            "x RSS peak over model MiB": [v["peak_memory_ratio"]],
        }

    return expect


def core_overhead(row: Row) -> dict[str, Any]:
    """Before/after the core change: cost-minilm-overhead-{before,after}.json."""
    data = load(f"cost-minilm-overhead-{row['core']}.json")
    variants = data["variants"]
    return {
        "fpt_peft step ms": [variants["fpt_peft"]["step_ms"]],
        "plain_fpt step ms": [variants["plain_fpt"]["step_ms"]],
        "fpt_peft overhead (paired)": [pct(data["fpt_peft_overhead_vs_plain_fpt"])],
    }


TINY_BERT_ROWS = {
    "forward, continuous inputs": ("continuous", "forward"),
    "forward, symbols + attention mask": ("symbols", "forward"),
    "training step, continuous": ("continuous", "step"),
    "training step, symbols": ("symbols", "step"),
}


def tiny_bert(row: Row) -> dict[str, Any]:
    """Per-call overhead: the median over four runs per side, with the runs in brackets (ab-1, ab-2, ab-3, main)."""
    label = row["tiny-bert, per call"]
    if label.startswith("host syncs"):
        case = "symbols" if "symbols" in label else "continuous"
        syncs = {side: load(f"overhead-{side}.json")["cases"][case] for side in ("before", "after")}
        return {
            "tiny-bert, per call": [syncs["before"]["plain_fpt"]["syncs_per_forward"]],
            **{side: [c["fpt_peft"]["syncs_per_forward"]] for side, c in syncs.items()},
        }
    case, kind = TINY_BERT_ROWS[label]
    expected = {}
    for side in ("before", "after"):
        names = [f"overhead-ab/{side}-{i}.json" for i in (1, 2, 3)] + [f"overhead-{side}.json"]
        runs = [load(name)["cases"][case] for name in names]
        us = [run[f"{kind}_overhead_us"] for run in runs]
        expected[side] = [statistics.median(us), pct(statistics.median(r[f"{kind}_overhead"] for r in runs)), *us]
    return expected


GPU_FILES = {"fp32": "fp32", "tf32": "tf32", "bf16 (autocast)": "bf16", "bf16 + `torch.compile`": "bf16-compile"}


def gpu(row: Row) -> dict[str, Any]:
    """One precision per row: cost-gpt2-cuda-<precision>.json."""
    data = load(f"cost-gpt2-cuda-{GPU_FILES[row['precision']]}.json")
    v = data["variants"]
    fpt = v["fpt_peft"]
    return {
        "fpt_peft ms": [fpt["step_ms"]],
        "plain FPT ms": [v["plain_fpt"]["step_ms"]],
        "full ms": [v["full"]["step_ms"]],
        "fpt_peft / plain FPT": paired(fpt, v["plain_fpt"]),
        "fpt_peft / full": paired(fpt, v["full"]),
        "matmul TFLOP/s": [data["matmul_tflops"]],
        "fpt_peft TFLOP/s": [fpt["achieved_tflops"]],
        "of matmul": [pct(fpt["share_of_matmul_rate"])],
    }


def gpu_targets(row: Row) -> dict[str, Any]:
    """The GPU targets beside the H200 files' figures; a target no file measures shows no number."""
    compiled, fp32 = (load(f"cost-gpt2-cuda-{p}.json")["variants"] for p in ("bf16-compile", "fp32"))
    target = row["target"]
    if target.startswith("bf16 + compile: fpt_peft within 5%"):
        repeat = load("cost-gpt2-cuda-bf16-compile-repeat.json")
        rounds = len(repeat["variants"]["fpt_peft"]["step_ms_rounds"])
        return {"measured": [pct(repeat["fpt_peft_overhead_vs_plain_fpt"]), rounds]}
    if target.startswith("fpt_peft step time at most"):
        return {
            "measured": [paired(compiled["fpt_peft"], compiled["full"])[0], paired(fp32["fpt_peft"], fp32["full"])[0]]
        }
    if target.startswith("at least 20%"):
        eager = load("cost-gpt2-cuda-bf16.json")["variants"]["fpt_peft"]
        return {"measured": [pct(compiled["fpt_peft"]["share_of_matmul_rate"]), pct(eager["share_of_matmul_rate"])]}
    return {"measured": []}  # not measured: no GPU


LARGEST_BATCH_FILES = {
    "GPT-2 small (80 GiB)": "largest_batch-gpt2-shape-counted-80gib.json",
    "GPT-2 medium (80 GiB)": "largest_batch-gpt2-medium-shape-counted-80gib.json",
    "tiny BERT (1 GiB)": "largest_batch-tiny-bert.json",
}


def largest_batch(row: Row) -> dict[str, Any]:
    """One shape per row: the counted largest batch of each set-up."""
    v = load(LARGEST_BATCH_FILES[row["shape"]])["variants"]
    columns = {"fpt_peft": "fpt_peft", "full finetuning": "full"}
    found = {column: [v[name]["largest_batch"]] for column, name in columns.items()}
    found |= {
        f"{column} + checkpointing": [v[f"{name} + checkpointing"]["largest_batch"]]
        for column, name in columns.items()
    }
    found["full + checkpointing"] = found.pop("full finetuning + checkpointing")
    return found


def adapters(row: Row) -> dict[str, Any]:
    m = load("adapters.json")["models"][row["model"]]
    return {
        "base MiB": [mib(m["base_bytes"])],
        "adapter KiB (cifar10 / mnist)": [m["adapter_bytes"]["cifar10"] / 1024, m["adapter_bytes"]["mnist"] / 1024],
        "base / adapter": [m["base_to_adapter_size_ratio"]],
        "set_adapter us": [m["set_adapter_us"]],
        "load_adapter ms": [m["load_adapter_ms"]],
        "reload base ms": [m["reload_base_ms"]],
        "reload base + adapter ms": [m["reload_base_with_adapter_ms"]],
        "4 adapters, 16 rows: mixed batch / switching ms": [
            m["mixed_batch_4_adapters_ms"],
            m["switching_sub_batches_4_adapters_ms"],
        ],
    }


def pretrained_vs_random(row: Row) -> dict[str, Any]:
    task = load("pretrained_vs_random.json")["tasks"][TASKS[row["task"]]]
    init = row["init"]
    s = task[init]
    return {
        "final % per lr, seed 0": per_lr_seed0(s),
        "chosen lr": [s["best_lr"]],
        "final %, mean (seed 0, seed 1)": chosen(s),
        "steps to threshold (seed 0, seed 1)": s["steps_to_threshold"],
        "paper final %": [task["paper"]["accuracy"][init]],
        "paper steps to converge": [task["paper"]["steps"][init]],
    }


def next_rate(row: Row) -> dict[str, Any]:
    """The grid extended by one rate (seed 0), beside the main run's figures at the chosen rate."""
    key = TASKS[row["task"].split(" (")[0]]
    name = "pretrained_vs_random-xor-lr3e-2.json" if key == "bit_xor" else "pretrained_vs_random-lr1e-2.json"
    ext, main = load(name)["tasks"][key], load("pretrained_vs_random.json")["tasks"][key]
    (lr,) = ext["pretrained"]["learning_rates"]
    best = {init: main[init]["best_lr"] for init in ("pretrained", "random")}
    main_figures = {init: pct(seed0(at_lr(main[init], best[init]))) for init in best}
    choice = {
        "bit_xor": [best["random"]],  # "1e-2 stays random's best"
        "listops": [0, main_figures["random"], best["random"], pct(seed0(ext["random"])), 1],  # 0, 1: seed numbers
    }.get(key, [best["pretrained"], main_figures["pretrained"], main_figures["random"]])
    return {
        "task": [lr],
        "pretrained at the next rate": [pct(seed0(ext["pretrained"]))],
        "random at the next rate": [pct(seed0(ext["random"]))],
        "does the choice move?": choice,
    }


def full_xor(row: Row) -> dict[str, Any]:
    """Full-size bit XOR. Rows: each init's two rates of the sweep (full_size-bit_xor.json, the merge of its two
    halves), then two extension runs of random: one more rate up, and 3e-3 uncapped."""
    init, lr_cell = row["init"], row["lr"]
    if "extension" in lr_cell:
        name = "full_size-bit_xor-random-2e4.json" if "uncapped" in lr_cell else "full_size-bit_xor-random-lr1e-2.json"
        (lr,) = load(name)["settings"]["lrs"]["bit_xor"]
    else:
        name = "full_size-bit_xor.json"
        summary = load(name)["tasks"]["bit_xor"][init]
        (lr,) = [x for x in summary["learning_rates"] if (x == summary["best_lr"]) == ("chosen" in lr_cell)]
    runs = sorted((r for r in load(name)["runs"] if r["init"] == init and r["lr"] == lr), key=lambda r: r["seed"])
    converged = [first_step(r, 1.0) for r in runs]
    paper = load(name)["tasks"]["bit_xor"]["paper"]
    return {
        "lr": [lr] + ([r["seed"] for r in runs] if "extension" in lr_cell else []),
        "final % (seed 0, seed 1)": [pct(r["final_accuracy"]) for r in runs],
        "steps to 90%": collapsed([first_step(r, 0.9) for r in runs]),
        "steps to converge (100%)": (
            [None, *span(r["steps_trained"] for r in runs)] if collapsed(converged) == [None] else converged
        ),
        "wall time per run": span(r["seconds"] for r in runs),
        "paper": [paper["accuracy"][init], paper["steps"][init]] if "chosen" in lr_cell else [],
    }


def full_memory(row: Row) -> dict[str, Any]:
    data = load("full_size-bit_memory.json")
    task, init = data["tasks"]["bit_memory"], row["init"]
    s = task[init]
    assert task["plan"]["threshold"] == 0.99, "the column is 'steps to 99%'"
    return {
        "final % per lr, seed 0 (1e-3 / 3e-3)": per_lr_seed0(s),
        "chosen lr": [s["best_lr"]],
        "final %, mean (seed 0, seed 1)": chosen(s),
        "steps to 99%": collapsed(s["steps_to_threshold"]),
        "wall time per run": span(r["seconds"] for r in data["runs"] if r["init"] == init),
        "paper final %": [task["paper"]["accuracy"][init]],
        "paper steps to converge": [task["paper"]["steps"][init]],
    }


FULL_SIZE_GPU_FILES = ("gpu-full_size.json", "gpu-full_xor_random.json", "gpu-full_listops.json")


def gpu_runs(task: str, init: str, lr: float) -> list[dict[str, Any]]:
    """The full-size runs on the GPU of one task, init and rate, seed 0 first."""
    runs = [r for name in FULL_SIZE_GPU_FILES for r in load(name)["runs"]]
    found = [r for r in runs if (r["task"], r["init"], r["lr"]) == (task, init, lr)]
    assert sorted(r["seed"] for r in found) == [0, 1], (task, init, lr)
    return sorted(found, key=lambda r: r["seed"])


def last_train_loss(run: dict[str, Any]) -> float:
    return [loss for loss in run["train_loss"] if loss is not None][-1]


def gpu_full(row: Row) -> dict[str, Any]:
    """Full size on the GPU: one row per task, init and rate, two seeds each."""
    task, init, lr = TASKS[row["task"]], row["init"], float(row["lr"])
    runs = gpu_runs(task, init, lr)
    name = next(n for n in FULL_SIZE_GPU_FILES if task in load(n)["tasks"] and init in load(n)["tasks"][task])
    paper = load(name)["tasks"][task]["paper"]
    bits = task != "listops"
    expected: dict[str, Any] = {
        "lr": [lr],
        "final % (seed 0, seed 1)": [pct(r["final_accuracy"]) for r in runs],
        "training loss at the end (seed 0, seed 1)": [last_train_loss(r) for r in runs],
    }
    if bits:
        to_converge = collapsed([first_step(r, 1.0) for r in runs])
        expected["steps to 99%"] = collapsed([first_step(r, 0.99) for r in runs])
        expected["steps to 100%"] = to_converge + ([1e4] if to_converge == [None] else [])
        assert all(r["steps_trained"] == 10_000 for r in runs if first_step(r, 1.0) is None)
    if row["paper final %"]:
        expected["paper final %"] = [paper["accuracy"][init]]
        expected["paper steps to converge"] = [paper["steps"][init]]
    return expected


def gpu_difference(row: Row) -> dict[str, Any]:
    """Pretrained minus random at 1e-3 on the GPU, paired by seed, with a Student-t 95% interval (1 df)."""
    task = TASKS[row["task"]]
    pairs = zip(gpu_runs(task, "pretrained", 1e-3), gpu_runs(task, "random", 1e-3), strict=True)
    differences = [pct(a["final_accuracy"]) - pct(b["final_accuracy"]) for a, b in pairs]  # type: ignore[operator]
    mean = statistics.mean(differences)
    half = 12.706204736174707 * statistics.stdev(differences) / math.sqrt(2)  # scipy.stats.t.ppf(0.975, 1)
    reading = "helps" if mean - half > 0 else "hurts" if mean + half < 0 else "no difference detected"
    assert row["reading"] == reading, (row, reading)
    return {
        "difference, points (seed 0, seed 1)": differences,
        "mean [95% interval]": [mean, mean - half, mean + half],
    }


COMPARED = {"bit XOR": "bit_xor", "bit memory": "bit_memory", "ListOps": "listops", "digits": "digits"}
COMPARED |= {name: name for name in ("BasicMotions", "GunPoint", "ItalyPowerDemand", "ArrowHead", "JapaneseVowels")}
COMPARED |= {"OSULeaf": "OSULeaf"}


def compared(task: str) -> dict[str, Any]:
    """A comparison's compare.json under benchmarks/results/compare/."""
    return load(f"compare/{COMPARED[task]}/compare.json")


def compare_arm(row: Row) -> dict[str, Any]:
    """One arm of one task's comparison: mean [interval], per-seed test scores and the rates chosen on validation."""
    arm = compared(row["task"])["arms"][row["arm"]]
    rates = [lr for lr in arm["lr"] if lr is not None]
    return {
        "test, mean [95% interval]": [arm["mean"], *arm["ci95"]],
        "per seed (0-4)": arm["test"],
        "chosen rates": rates,
    }


def compare_difference(row: Row) -> dict[str, Any]:
    """``fpt_pretrained`` minus one arm, paired by seed; the verdict is the file's."""
    difference = compared(row["task"])["differences"][row["fpt_pretrained minus"]]
    assert row["verdict"] == difference["verdict"], (row, difference["verdict"])
    return {"mean [95% interval]": [difference["mean"], *difference["ci95"]]}


def compare_verdicts(row: Row) -> dict[str, Any]:
    """A series set's verdicts (words only) against three arms, as its compare.json gives them."""
    differences = compared(row["set"])["differences"]
    for column, arm in (("random", "fpt_random"), ("no LM", "no_lm"), ("MiniRocket", "minirocket")):
        shown = row[f"pretrained minus {column}"]
        assert shown == differences[arm]["verdict"], (row["set"], arm, shown, differences[arm]["verdict"])
    return {}


ABLATION_PAPER = {"digits": ["MNIST", "CIFAR-10"], "bit_memory": ["Memory"]}


def ablation(row: Row) -> dict[str, Any]:
    data = load("ablation.json")
    key, rung = TASKS[row["task"]], row["trained"].removesuffix(" (FPT)")
    task = data["tasks"][key]
    s = task["rungs"][rung]
    threshold = pct(task["plan"]["threshold"])
    best = pct(seed0(at_lr(s, s["best_lr"])))
    tied = [lr for lr in s["learning_rates"] if lr != s["best_lr"] and abs(pct(seed0(at_lr(s, lr))) - best) < 0.05]
    steps = s["steps_to_threshold"]
    return {
        "trainable params": [s["trainable_parameters"]],
        "final % per lr (1e-3 / 3e-3 / 1e-2), seed 0": per_lr_seed0(s),
        # "1e-2 (edge; tied with 3e-3, chosen on fewer steps to 80%)"
        "chosen lr": [s["best_lr"], *tied, threshold] if tied else [s["best_lr"]],
        "final %, mean (seed 0, seed 1)": chosen(s),
        # "90%: not reached, not reached" where no seed reached it
        "steps to threshold (seed 0, seed 1)": [threshold, *steps] if collapsed(steps) == [None] else steps,
        "paper %": [data["paper_all_tasks"][paper][rung] for paper in ABLATION_PAPER[key]],
    }


TS_METHODS = ("FPT pretrained", "FPT random", "MiniRocket", "1-NN DTW")
TS_PUBLISHED = ("GPT4TS", "MiniRocket", "1-NN DTW", "1-NN ED")  # the order the doc lists them in


def time_series(row: Row) -> dict[str, Any]:
    data = load("time_series.json")
    label = row["dataset (train/test, channels x length, classes)"]
    per_method = {m: [d["methods"][m] for d in data["datasets"].values()] for m in TS_METHODS}
    if label in ("training wall time per run", "trained parameters"):  # ranges over the six datasets
        key, unit = ("seconds", 1) if label.startswith("training") else ("trained_parameters", 1e3)  # "209-229k"
        ranges = {m: [n / unit for n in span(x[key] for x in per_method[m])] for m in TS_METHODS}
        return ranges | {"published": []}
    name = label.split(" (")[0]
    methods, published = data["datasets"][name]["methods"], data["published"][name]
    expected: dict[str, Any] = {m: [pct(methods[m]["accuracy"])] for m in TS_METHODS}
    if "(lr" in row["FPT pretrained"]:
        expected["FPT pretrained"].append(float(methods["FPT pretrained"]["best_lr"].split()[0]))
    expected["published"] = [pct(published[k]) for k in TS_PUBLISHED if k in published]
    return expected


TS_INPUTS = {
    "normalised, channels in one token": "norm+mix",
    "not normalised, one token": "raw+mix",
    "normalised, one token per channel": "norm+separate",
    "not normalised, one token per channel": "raw+separate",
}


def time_series_inputs(row: Row) -> dict[str, Any]:
    """Accuracy per input option; the one-token-per-channel cells add the run's seconds."""
    runs = {r["label"]: r for r in load("time_series-inputs.json")["input_handling"]}
    expected: dict[str, Any] = {}
    for column, option in TS_INPUTS.items():
        run = runs.get(f"{row['dataset']}:{option}")
        seconds = [run["seconds"]] if run and option.endswith("separate") else []
        expected[column] = NOT_RUN if run is None else [pct(run["final_accuracy"]), *seconds]
    return expected


def cli_startup(row: Row) -> dict[str, Any]:
    medians = load("cli_startup.json")["median_seconds"]
    command = row["command"].split("`")[1]
    if command == "python recipes/X.py --help":
        recipes = [s for key, s in medians.items() if key.startswith("recipes/")]
        return {"command": [len(recipes)], "median s": span(recipes)}
    (key,) = [key for key in medians if key == command or key.startswith(command + " (")]
    return {"median s": [medians[key]]}


@dataclass(frozen=True)
class Check:
    """A checked table: the start of its section's heading and its second column's name (which tell the tables of a
    section apart), the strings by which that section cites its result files, and the row -> expected function."""

    heading: str
    column: str
    cites: tuple[str, ...]
    expect: Callable[[Row], dict[str, Any]]
    unchecked: dict[str, str] = field(default_factory=dict)  # column -> why its numbers are not from a file


TABLES = [
    Check("MiniLM-L6-H384", "trainable params", ("cost-minilm.png",), cost_cpu("cost-minilm.json")),
    Check("GPT-2 small's shape", "trainable params", ("cost-gpt2-shape.png",), cost_cpu("cost-gpt2-shape.json")),
    # The section gives the command of cost-minilm-overhead-{before,after}.json rather than their names.
    Check("Overhead of fpt_peft", "fpt_peft step ms", ("--variants fpt_peft plain_fpt --repeats 9",), core_overhead),
    Check("Overhead of fpt_peft", "before", ("overhead-{before,after}.json", "overhead-ab/"), tiny_bert),
    Check("Cost on a GPU", "fpt_peft ms", ("cost-gpt2-cuda-{fp32,tf32,bf16,bf16-compile}.json",), gpu),
    Check(
        "One command for a GPU run",
        "measured",
        ("cost-gpt2-cuda-bf16-compile-repeat.json", "python -m benchmarks.gpu_suite --out-dir DIR"),
        gpu_targets,
        unchecked={"target": "the targets set", "where": "file names", "status": "words"},
    ),
    Check(
        "One command for a GPU run",
        "fpt_peft",
        ("largest_batch-gpt2-shape-counted-80gib", "--model tiny-bert --memory-budget-gib 1"),
        largest_batch,
        unchecked={"shape": "names"},
    ),
    Check("Adapters", "base MiB", ("adapters.png",), adapters),
    Check("Pretrained vs random", "init", ("pretrained_vs_random.json",), pretrained_vs_random),
    Check(
        "Pretrained vs random",
        "pretrained at the next rate",
        ("--name pretrained_vs_random-lr1e-2", "--name pretrained_vs_random-xor-lr3e-2"),
        next_rate,
    ),
    Check(
        "Full size",
        "lr",
        ("full_size-bit_xor.png", "full_size-bit_xor-random-lr1e-2", "full_size-bit_xor-random-2e4"),
        full_xor,
    ),
    Check("Full size", "final % per lr, seed 0 (1e-3 / 3e-3)", ("--name full_size-bit_memory",), full_memory),
    Check("On a GPU", "init", (*FULL_SIZE_GPU_FILES, "gpu-full_size.png"), gpu_full),
    Check("On a GPU", "difference, points (seed 0, seed 1)", FULL_SIZE_GPU_FILES, gpu_difference),
    Check("Does the frozen LM help? The library", "arm", ("benchmarks/results/compare/bit_xor",), compare_arm),
    Check("Does the frozen LM help? The library", "fpt_pretrained minus", ("compare/listops",), compare_difference),
    Check("Does the frozen LM help? The library", "pretrained minus random", ("compare/OSULeaf",), compare_verdicts),
    Check("Ablation", "trained", ("ablation.json",), ablation),
    Check(
        "Time series",
        "FPT pretrained",
        ("time_series.json",),
        time_series,
        {"dataset (train/test, channels x length, classes)": "the archives' sizes, which the file does not record"},
    ),
    Check("Time series", "normalised, channels in one token", ("time_series-inputs.json",), time_series_inputs),
    Check("Command-line start-up", "median s", ("cli_startup.json",), cli_startup),
]

EXCLUDED = {
    ("Cost", "what it is"): "describes the four set-ups in words; no figures",
    ("Pretrained vs random", "ours"): "the task sizes and grids (settings, ours beside the paper's), not results",
    ("Your own data", "train / test"): "cites no result file: one-off runs of recipes/own_data.py, kept as written",
}


def _matches(table: Table, heading: str, column: str) -> bool:
    return table.heading.startswith(heading) and table.columns[1] == column


def test_every_table_is_checked_or_excluded() -> None:
    """Each table of the doc is checked by exactly one entry of TABLES or named in EXCLUDED, and vice versa."""
    keys = [(c.heading, c.column) for c in TABLES] + list(EXCLUDED)
    _, tables = parse_doc()
    for table in tables:
        claims = [key for key in keys if _matches(table, *key)]
        assert len(claims) == 1, f"{table.name}: claimed by {claims} (add it to TABLES or to EXCLUDED)"
    for key in keys:
        assert sum(_matches(t, *key) for t in tables) == 1, f"no single table under {key[0]!r} with column {key[1]!r}"


def table_problems(check: Check, table: Table) -> list[str]:
    """Every cell of ``table`` whose numbers differ from the file's values, as messages naming table, row and both
    values; a cell with numbers that ``check`` does not cover is one too."""
    problems = []
    for cells in table.rows:
        expected = check.expect(dict(zip(table.columns, cells, strict=True)))
        for column, cell in zip(table.columns, cells, strict=True):
            where = f"{table.name}, row {table.label(cells)!r}, column {column!r}: the doc shows {cell!r}"
            if column in check.unchecked:
                continue
            if column not in expected:
                if numbers(cell):
                    problems.append(f"{where}, and nothing checks its numbers")
            elif expected[column] == NOT_RUN:
                if NOT_RUN not in cell:
                    problems.append(f"{where}, the file has no such run")
            elif mismatch(numbers(cell), expected[column]):
                problems.append(f"{where}, the file's values are {show(expected[column])}")
    return problems


@pytest.mark.parametrize("check", TABLES, ids=lambda c: f"{c.heading}: {c.column}")
def test_table_numbers_equal_the_cited_files(check: Check) -> None:
    (table,) = [t for t in parse_doc()[1] if _matches(t, check.heading, check.column)]
    text = parse_doc()[0][table.heading]
    for cited in check.cites:
        assert cited in text, f"{table.name}: its section no longer cites {cited!r}"
    problems = table_problems(check, table)
    assert not problems, f"{len(problems)} cell(s) disagree with {check.cites}:\n" + "\n".join(problems)


# --------------------------------------------------------------------------------------------------- the prose
def _variants(name: str) -> dict[str, Any]:
    return load(name)["variants"]


def _gpu(precision: str) -> dict[str, Any]:
    return _variants(f"cost-gpt2-cuda-{precision}.json")


def _fpt_over_full(name: str) -> float:
    v = _variants(name)
    return paired(v["fpt_peft"], v["full"])[0]


def _cost_reading() -> dict[str, Callable[[], Expected]]:
    mini, gpt2 = _variants("cost-minilm.json"), _variants("cost-gpt2-shape.json")

    def state(v: dict[str, Any]) -> Expected:
        return [
            v["full"]["train_state_ratio"],
            *(mib(v[s]["memory"]["train_state_bytes"]) for s in ("fpt_peft", "full")),
        ]

    def peak(v: dict[str, Any]) -> Expected:
        fpt, full = (v[s]["memory"]["rss_training_peak_delta_bytes"] for s in ("fpt_peft", "full"))
        return [fpt / full, mib(fpt), mib(full)]

    return {
        "it comes close: {} (MiniLM) and {} (GPT-2 shape)": lambda: [
            _fpt_over_full("cost-minilm.json"),
            _fpt_over_full("cost-gpt2-shape.json"),
        ],
        "that is {} vs {} GFLOP = **{}** (GPT-2 shape: {})": lambda: [
            mini["fpt_peft"]["gflop"],
            mini["full"]["gflop"],
            1 / mini["full"]["flop_ratio"],
            1 / gpt2["full"]["flop_ratio"],
        ],
        "is {}x smaller for MiniLM ({} vs {} MiB) and {}x smaller for the GPT-2 shape ({} vs {} MiB)": lambda: [
            *state(mini),
            *state(gpt2),
        ],
        "shrink by only {}% (MiniLM) and {}% (GPT-2 shape)": lambda: [
            pct(1 - 1 / v["full"]["saved_activation_ratio"]) for v in (mini, gpt2)
        ],
        "is {}x of full finetuning for MiniLM ({} vs {} MiB) and {}x for the GPT-2 shape ({} vs {} MiB)": lambda: [
            *peak(mini),
            *peak(gpt2),
        ],
        "ln_tuning {}-{}x of fpt_peft": lambda: span(v["ln_tuning"]["step_time_ratio"] for v in (mini, gpt2)),
        "The forward ({}% of an FPT step)": lambda: [
            pct(mini["fpt_peft"]["forward_ms"] / mini["fpt_peft"]["step_ms"])
        ],
        "fused Adam takes {} ms for FPT's {}k parameters and {} ms for full finetuning's {}M parameters that receive "
        "gradients, about {}% of the step (GPT-2 shape: {} ms, {}%)": lambda: [
            mini["fpt_peft"]["optimizer_ms"],
            mini["fpt_peft"]["memory"]["trainable_parameters"] / 1e3,
            mini["full"]["optimizer_ms"],
            mini["full"]["memory"]["gradient_bytes"] / 4 / 1e6,  # float32 gradients
            pct(mini["full"]["optimizer_ms"] / mini["full"]["step_ms"]),
            gpt2["full"]["optimizer_ms"],
            pct(gpt2["full"]["optimizer_ms"] / gpt2["full"]["step_ms"]),
        ],
    }


def _overhead() -> dict[str, Callable[[], Expected]]:
    mini = _variants("cost-minilm.json")
    return {
        "The full runs above give {}% (MiniLM) and {}% (GPT-2 shape)": lambda: [
            pct(load(name)["fpt_peft_overhead_vs_plain_fpt"]) for name in ("cost-minilm.json", "cost-gpt2-shape.json")
        ],
        "On MiniLM it took {} ms per step for FPT's parameters and {} ms for full finetuning's": lambda: [
            mini["fpt_peft"]["optimizer_ms"],
            mini["full"]["optimizer_ms"],
        ],
    }


def _gpu_reading() -> dict[str, Callable[[], Expected]]:
    fp32, bf16, compiled = _gpu("fp32"), _gpu("bf16"), _gpu("bf16-compile")
    repeat_file = load("cost-gpt2-cuda-bf16-compile-repeat.json")
    repeat = repeat_file["variants"]

    def overhead(v: dict[str, Any]) -> Expected:
        """fpt_peft over plain FPT in %: the median and the range of the rounds."""
        return [pct(r - 1) for r in paired(v["fpt_peft"], v["plain_fpt"])]

    def quartiles(v: dict[str, Any]) -> Expected:
        rounds = [
            a / b for a, b in zip(v["fpt_peft"]["step_ms_rounds"], v["plain_fpt"]["step_ms_rounds"], strict=True)
        ]
        low, middle, high = statistics.quantiles(rounds, n=4)
        return [pct(middle - 1), pct(low - 1), pct(high - 1)]

    def peak(v: dict[str, Any]) -> Expected:
        return [mib(v[s]["memory"]["cuda_training_peak_delta_bytes"]) for s in ("fpt_peft", "full")]

    return {
        "torch's counted FLOPs: {} GFLOP per step for FPT, {} for full finetuning, ratio {})": lambda: [
            fp32["fpt_peft"]["gflop"],
            fp32["full"]["gflop"],
            fp32["fpt_peft"]["gflop"] / fp32["full"]["gflop"],
        ],
        "bf16 + compile: {} MiB for fpt_peft, {} MiB for full finetuning (fp32: {} and {})": lambda: [
            *peak(compiled),
            *peak(fp32),
        ],
        "runs at {} TFLOP/s; bf16 autocast plus `torch.compile` runs the same FPT step {}x faster ({} ms), "
        "{} TFLOP/s, {}% of the bf16 matrix-product rate": lambda: [
            fp32["fpt_peft"]["achieved_tflops"],
            fp32["fpt_peft"]["step_ms"] / compiled["fpt_peft"]["step_ms"],
            compiled["fpt_peft"]["step_ms"],
            compiled["fpt_peft"]["achieved_tflops"],
            pct(compiled["fpt_peft"]["share_of_matmul_rate"]),
        ],
        "Eager bf16 reaches only {}%": lambda: [pct(bf16["fpt_peft"]["share_of_matmul_rate"])],
        "within 1% in fp32 and tf32, {}% compiled in bf16": lambda: [
            pct(repeat_file["fpt_peft_overhead_vs_plain_fpt"])
        ],
        "gave medians of {}% (eager bf16) and {}% (compiled), with rounds from {}% to {}% and from {}% to "
        "{}%": lambda: [
            overhead(bf16)[0],
            overhead(compiled)[0],
            *overhead(bf16)[1:],
            *overhead(compiled)[1:],
        ],
        "gave a median of {}%, with the middle half of its rounds from {}% to {}%": lambda: quartiles(repeat),
        "FPT against full finetuning: {}-{}x the step time, not the {}x its FLOPs would allow.": lambda: [
            *span(paired(_gpu(p)["fpt_peft"], _gpu(p)["full"])[0] for p in ("fp32", "tf32", "bf16", "bf16-compile")),
            fp32["fpt_peft"]["gflop"] / fp32["full"]["gflop"],
        ],
    }


def _adapters() -> dict[str, Callable[[], Expected]]:
    models = load("adapters.json")["models"].values()
    return {
        "A mixed-adapter batch costs {}x (MiniLM) and {}x (GPT-2's shape)": lambda: [
            m["mixed_batch_4_adapters_ms"] / m["switching_sub_batches_4_adapters_ms"] for m in models
        ],
        "and {}-{}x faster than reloading base and adapter": lambda: span(
            m["reload_base_with_adapter_ms"] / (m["set_adapter_us"] / 1e3) for m in models
        ),
    }


def _pretrained_vs_random() -> dict[str, Callable[[], Expected]]:
    data = load("pretrained_vs_random.json")
    tasks = data["tasks"]
    xor_random = tasks["bit_xor"]["random"]
    xor_next = load("pretrained_vs_random-xor-lr3e-2.json")["tasks"]["bit_xor"]["random"]
    # random bit XOR at every rate from 3e-4 to 3e-2 (seed 0), and at its chosen rate on seed 1
    xor_random_finals = [*map(seed0, xor_random["per_lr"].values()), *xor_random["final_accuracy"], seed0(xor_next)]
    digits, listops = tasks["digits"], tasks["listops"]
    memory = tasks["bit_memory"]

    def at(init: str, lr: float) -> float | None:
        return pct(seed0(at_lr(digits[init], lr)))

    return {
        "random stays within 10 points of chance (at most {}%)": lambda: [pct(max(xor_random_finals))],
        "Random sits on that plateau ({}%, the paper's {}%)": lambda: [
            pct(memory["random"]["final_accuracy_mean"]),
            memory["paper"]["accuracy"]["random"],
        ],
        "**Clear: digits.** {}% against {}%. Pretrained reaches 90% in {} steps, random in {}-{}": lambda: [
            pct(digits["pretrained"]["final_accuracy_mean"]),
            pct(digits["random"]["final_accuracy_mean"]),
            *span(digits["pretrained"]["steps_to_threshold"]),
            *span(digits["random"]["steps_to_threshold"]),
        ],
        "Pretrained is ahead by {} points on seed 0 but by only {} points on seed 1 ({} vs {})": lambda: [
            *(
                pct(p - r)
                for p, r in zip(*(listops[i]["final_accuracy"] for i in ("pretrained", "random")), strict=True)
            ),
            pct(listops["pretrained"]["final_accuracy"][1]),
            pct(listops["random"]["final_accuracy"][1]),
        ],
        "the digits gap would be {} vs {} ({} points). With each init tuned it is {} vs {} on the same seed "
        "({} points)": (
            lambda: [
                at("pretrained", 1e-3),
                at("random", 1e-3),
                at("pretrained", 1e-3) - at("random", 1e-3),
                at("pretrained", digits["pretrained"]["best_lr"]),
                at("random", digits["random"]["best_lr"]),
                at("pretrained", digits["pretrained"]["best_lr"]) - at("random", digits["random"]["best_lr"]),
            ]
        ),
        "The run took **{} min** ({} runs": lambda: [data["seconds"] / 60, len(data["runs"])],
    }


def _full_size() -> dict[str, Callable[[], Expected]]:
    xor = load("full_size-bit_xor.json")
    pretrained = [r for r in xor["runs"] if r["init"] == "pretrained"]
    random_evals = [a for r in xor["runs"] if r["init"] == "random" for a in r["accuracy"]]
    uncapped = load("full_size-bit_xor-random-2e4.json")["runs"][0]
    higher = load("full_size-bit_xor-random-lr1e-2.json")["runs"][0]
    memory = load("full_size-bit_memory.json")
    finals = {
        init: [pct(r["final_accuracy"]) for r in memory["runs"] if r["init"] == init]
        for init in ("pretrained", "random")
    }
    listops = _variants("cost-minilm-listops512.json")["fpt_peft"]
    return {
        "within {} points of 50% (at most {}% at any evaluation)": lambda: [
            pct(max(abs(a - 0.5) for a in random_evals)),
            pct(max(random_evals)),
        ],
        "gets every eval bit right after {}-{} steps": lambda: span(first_step(r, 1.0) for r in pretrained),
        "Ours needs {}-{} steps at the paper's rate of 1e-3": lambda: span(
            first_step(r, 1.0) for r in pretrained if r["lr"] == 1e-3
        ),
        "the pretrained curve ends where its first seed converged (step {})": lambda: [
            min(xor["tasks"]["bit_xor"]["pretrained"]["steps_to_threshold"])
        ],
        "it is at {}% after the paper's full 2e4 steps, and at most {}% at any evaluation": lambda: [
            pct(uncapped["final_accuracy"]),
            pct(max(uncapped["accuracy"])),
        ],
        "is at chance too: {}% after 1e4 steps, at most {}% at any evaluation": lambda: [
            pct(higher["final_accuracy"]),
            pct(max(higher["accuracy"])),
        ],
        "Pretrained sits {}-{} points above it ({}-{}%), and random sits at {}-{}%": lambda: [
            *span(f - 75 for f in finals["pretrained"]),
            *span(finals["pretrained"]),
            *span(finals["random"]),
        ],
        "costs {} GFLOP ({} forward, {} backward) and took {} s": lambda: [
            listops["gflop"],
            listops["forward_gflop"],
            listops["backward_gflop"],
            listops["step_ms"] / 1e3,
        ],
    }


def _full_size_gpu() -> dict[str, Callable[[], Expected]]:
    memory = gpu_runs("bit_memory", "pretrained", 1e-3)
    xor = gpu_runs("bit_xor", "pretrained", 1e-3)
    random_xor = [r for lr in (3e-4, 1e-3, 3e-3) for r in gpu_runs("bit_xor", "random", lr)]
    seed_0, seed_1 = gpu_runs("listops", "pretrained", 1e-3)
    random_0, random_1 = gpu_runs("listops", "random", 1e-3)
    return {
        "99.8% per bit on both seeds, 99% from step {}": lambda: span(first_step(r, 0.99) for r in memory),
        "Pretrained gets every eval bit right at step {}-{}": lambda: span(first_step(r, 1.0) for r in xor),
        "its training loss ends at {}-{}, at or above ln 2 = 0.693": lambda: span(map(last_train_loss, random_xor)),
        "Pretrained seed 0 reads {}% at every evaluation from step {} on": lambda: [
            pct(seed_0["accuracy"][-1]),
            seed_0["eval_steps"][
                min(i for i in range(len(seed_0["accuracy"])) if len(set(seed_0["accuracy"][i:])) == 1)
            ],
        ],
        "seed 1 reads {}% from step {} to {}, then rises to {}%": lambda: [
            pct(seed_1["accuracy"][1]),
            seed_1["eval_steps"][1],
            max(
                s for s, a in zip(seed_1["eval_steps"], seed_1["accuracy"], strict=True) if a == seed_1["accuracy"][1]
            ),
            pct(max(seed_1["accuracy"])),
        ],
        "seed 0 reads {}-{}% from step {} to {} (its most frequent class": lambda: [
            *span(pct(a) for a in random_0["accuracy"][2:-1]),
            random_0["eval_steps"][2],
            random_0["eval_steps"][-2],
        ],
        "15.6%) and {}% only at the last evaluation": lambda: [pct(random_0["accuracy"][-1])],
        "seed 1 moves between {}% and {}%": lambda: span(pct(a) for a in random_1["accuracy"][1:]),
    }


def _compare_evidence() -> dict[str, Callable[[], Expected]]:
    xor, listops = compared("bit XOR"), compared("ListOps")
    digits, memory = compared("digits"), compared("bit memory")
    probes = load("xor_probe.json")["probes"]

    def mean(data: dict[str, Any], arm: str) -> Expected:
        return [data["arms"][arm]["mean"]]

    def difference(data: dict[str, Any], arm: str) -> Expected:
        return [data["differences"][arm]["mean"], *data["differences"][arm]["ci95"]]

    return {
        "Pretrained FPT reads {} per bit": lambda: mean(xor, "fpt_pretrained"),
        "frozen random MiniLM {}: chance": lambda: mean(xor, "fpt_random"),
        "the LM) read {} on every seed": lambda: [min(min(xor["arms"][a]["test"]) for a in ("scratch", "attn_only"))],
        "reads {}, above random's {} and far below pretrained's {}, on every seed": lambda: [
            *mean(xor, "fpt_random_matched"),
            *mean(xor, "fpt_random"),
            *mean(xor, "fpt_pretrained"),
        ],
        "falls to {}: the pretrained": lambda: mean(xor, "shuffled"),
        "as well as from pretrained: {} against {} from every token, {} against {} from the last token": lambda: [
            probes[f"{init}, {reading}, dropout off"]
            for reading in ("all tokens", "last token")
            for init in ("random", "pretrained")
        ],
        "where the raw inputs give {}": lambda: [probes["raw inputs"]],
        "the last token gives {} (random) and {} (pretrained)": lambda: [
            probes[f"{init}, last token, dropout on"] for init in ("random", "pretrained")
        ],
        "{} against {} for random ({} [{}, {}]), but `no_lm` reads {}": lambda: [
            *mean(digits, "fpt_pretrained"),
            *mean(digits, "fpt_random"),
            *difference(digits, "fpt_random"),
            *mean(digits, "no_lm"),
        ],
        "*hurts* against it ({} [{}, {}])": lambda: difference(digits, "no_lm"),
        "logistic regression ({}) and a random forest ({})": lambda: [
            *mean(digits, "logistic_regression"),
            *mean(digits, "random_forest"),
        ],
        "{} against {} ({} [{}, {}]); against `no_lm` ({}) no difference is detected ({} [{}, {}])": lambda: [
            *mean(memory, "fpt_pretrained"),
            *mean(memory, "fpt_random"),
            *difference(memory, "fpt_random"),
            *mean(memory, "no_lm"),
            *difference(memory, "no_lm"),
        ],
        "{} against {} for random, {} [{}, {}], and {}": lambda: [
            *mean(listops, "fpt_pretrained"),
            *mean(listops, "fpt_random"),
            *difference(listops, "fpt_random"),
            listops["differences"]["no_lm"]["mean"],
        ],
    }


def _ablation() -> dict[str, Callable[[], Expected]]:
    data = load("ablation.json")
    rungs = ["output only", "+ layer norms", "+ input", "+ positions"]
    means = {t: [pct(data["tasks"][t]["rungs"][r]["final_accuracy_mean"]) for r in rungs] for t in data["tasks"]}
    digits_rungs = data["tasks"]["digits"]["rungs"]
    return {
        "memory goes {} -> {} -> {} -> {}, and digits {} -> {} -> {} -> {}": lambda: [
            *means["bit_memory"],
            *means["digits"],
        ],
        "largest single step, +{} points, with {}k parameters": lambda: [
            means["digits"][1] - means["digits"][0],
            (
                digits_rungs["+ layer norms"]["trainable_parameters"]
                - digits_rungs["output only"]["trainable_parameters"]
            )
            / 1e3,
        ],
        "three steps are of similar size** (+{}, +{}, +{})": lambda: [
            b - a for a, b in itertools.pairwise(means["bit_memory"])
        ],
        "as the paper's did ({} vs {})": lambda: [
            means["bit_memory"][0],
            data["paper_all_tasks"]["Memory"]["output only"],
        ],
        "On digits, output only reaches {}%, not the paper's {}%": lambda: [
            means["digits"][0],
            data["paper_all_tasks"]["MNIST"]["output only"],
        ],
        '"+ input" and "+ positions" ({} and {})': lambda: means["digits"][2:],
        "The run took **{} min** ({} runs": lambda: [data["seconds"] / 60, len(data["runs"])],
    }


def _time_series() -> dict[str, Callable[[], Expected]]:
    data = load("time_series.json")
    methods = {name: d["methods"] for name, d in data["datasets"].items()}

    def acc(name: str, method: str) -> float:
        return pct(methods[name][method]["accuracy"])

    shapes = ("GunPoint", "ArrowHead", "OSULeaf")
    inputs = {r["label"]: r for r in load("time_series-inputs.json")["input_handling"]}
    return {
        "{}-{} steps, one thread per run": lambda: span(p["steps"] for p in data["settings"]["plans"].values()),
        "on all six datasets, by {} (JapaneseVowels, within noise) to {} points (BasicMotions)": lambda: span(
            acc(n, "FPT pretrained") - acc(n, "FPT random") for n in methods
        ),
        "on JapaneseVowels (ahead by {} points)": lambda: [
            acc("JapaneseVowels", "FPT pretrained") - acc("JapaneseVowels", "1-NN DTW")
        ],
        "ArrowHead ({} points) and OSULeaf ({} points)": lambda: [
            acc(n, "1-NN DTW") - acc(n, "FPT pretrained") for n in ("ArrowHead", "OSULeaf")
        ],
        "by {}-{} points on the small univariate shape datasets": lambda: span(
            acc(n, "MiniRocket") - acc(n, "FPT pretrained") for n in shapes
        ),
        "MiniRocket is within {} points of its 30-resample mean": lambda: [
            max(
                abs(acc(n, "MiniRocket") - pct(p["MiniRocket"]))
                for n, p in data["published"].items()
                if "MiniRocket" in p
            )
        ],
        "{}-{} times faster than FPT": lambda: span(
            m[f"FPT {init}"]["seconds"] / m["MiniRocket"]["seconds"]
            for m in methods.values()
            for init in ("pretrained", "random")
        ),
        "(JapaneseVowels {} vs {}) it is within one or two test series of MiniRocket and of GPT4TS's published {},": (
            lambda: [
                acc("JapaneseVowels", "FPT pretrained"),
                acc("JapaneseVowels", "MiniRocket"),
                pct(data["published"]["JapaneseVowels"]["GPT4TS"]),
            ]
        ),
        "costs {} points there": lambda: [
            pct(
                inputs["JapaneseVowels:raw+mix"]["final_accuracy"]
                - inputs["JapaneseVowels:norm+mix"]["final_accuracy"]
            )
        ],
        "at {} times the training time": lambda: [
            inputs["BasicMotions:raw+separate"]["seconds"] / inputs["BasicMotions:raw+mix"]["seconds"]
        ],
        "(This run used {} steps on JapaneseVowels; the comparison above, {}.)": lambda: [
            inputs["JapaneseVowels:raw+mix"]["steps"],
            data["settings"]["plans"]["JapaneseVowels"]["steps"],
        ],
    }


def _cli() -> dict[str, Callable[[], Expected]]:
    medians = load("cli_startup.json")["median_seconds"]
    return {"instead of {} s": lambda: [medians["import fpt_peft.training (before)"]]}


# (heading of the section, what its prose is checked against): template with {} for each number -> expected values
PROSE = {
    ("Reading: does an FPT step", "cost-minilm.json, cost-gpt2-shape.json"): _cost_reading,
    ("Overhead of fpt_peft", "cost-minilm.json, cost-gpt2-shape.json"): _overhead,
    ("Cost on a GPU", "cost-gpt2-cuda-*.json"): _gpu_reading,
    ("Adapters", "adapters.json"): _adapters,
    ("Pretrained vs random", "pretrained_vs_random*.json"): _pretrained_vs_random,
    ("Full size", "full_size-*.json, cost-minilm-listops512.json"): _full_size,
    ("On a GPU", "gpu-full_*.json"): _full_size_gpu,
    ("Does the frozen LM help? The library", "compare/*/compare.json, xor_probe.json"): _compare_evidence,
    ("Ablation", "ablation.json"): _ablation,
    ("Time series", "time_series.json, time_series-inputs.json"): _time_series,
    ("Command-line start-up", "cli_startup.json"): _cli,
}


def _prose_cases() -> list[tuple[str, str, str, Callable[[], Expected]]]:
    return [
        (heading, files, template, f) for (heading, files), make in PROSE.items() for template, f in make().items()
    ]


def _literal(text: str) -> str:
    """A template's words as a pattern; spaces and line breaks, at its ends too, match any run of them."""
    words = r"\s+".join(map(re.escape, text.split()))
    lead = r"\s+" if text[:1].isspace() else ""
    trail = r"\s+" if text[-1:].isspace() and words else ""
    return lead + words + trail


def template_pattern(template: str) -> re.Pattern[str]:
    """A sentence with ``{}`` for its numbers, as a pattern with one group per number."""
    return re.compile(f"({NUMBER})".join(map(_literal, template.split("{}"))))


@pytest.mark.parametrize(
    ("heading", "files", "template", "expect"), _prose_cases(), ids=[f"{c[0]}: {c[2][:50]}" for c in _prose_cases()]
)
def test_prose_numbers_equal_the_cited_files(
    heading: str, files: str, template: str, expect: Callable[[], Expected]
) -> None:
    found = template_pattern(template).search(section(heading))
    assert found, f"under {heading!r}: no sentence matches {template!r}"
    shown, expected = list(found.groups()), expect()
    assert not mismatch(shown, expected), (
        f"under {heading!r}, {template!r}: the doc says {shown}, {files} give {show(expected)}"
    )


def test_numbers_are_read_and_compared_at_the_precision_shown() -> None:
    """The reading rules the checks above rely on."""
    assert numbers("+478 us (+20%) [469, 488, 113, -47]") == ["+478", "+20", "469", "488", "113", "-47"]
    assert numbers("1.004 (1.00-1.01)") == ["1.004", "1.00", "1.01"]
    assert numbers("MNIST 23 (CIFAR-10 25); GPT4TS 98.6; fp32") == ["23", "25", "98.6"]
    assert numbers("1,280 | 22.4+44.7 | not reached in 1e4") == ["1,280", "22.4", "44.7", "not reached", "1e4"]
    assert agrees("83.9", 83.87) and not agrees("83.8", 83.87) and agrees("80.5", 80.55) and agrees("80.6", 80.55)
    assert agrees("1,280", 1280.17) and not agrees("1,281", 1280.17) and agrees("1e-3", 0.001)
    assert agrees("not reached", None) and not agrees("150", None) and not agrees("not reached", 150)
    assert mismatch(["1", "2"], [1.0]) and not mismatch(["1", "2"], [1.0, 2.0])
