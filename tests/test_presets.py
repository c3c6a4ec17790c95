"""``--preset paper`` gives the official set-up of Lu et al. (2021) in every paper recipe, explicit flags win, and
every run records (in ``metrics.json`` and the model card; printed for ``--preset paper``) how its set-up differs from
the paper's.

The expected values are written out here from the official code (github.com/kzl/universal-computation, commit
23b80fd: ``scripts/run.py``, ``experiment.py``, ``trainer.py``, ``fpt.py``, ``datasets/*.py``) and the paper, not
read from :mod:`fpt_peft.presets`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

import fpt_peft.data
import fpt_peft.training
from fpt_peft.arguments import FPTTrainingArguments
from fpt_peft.presets import PAPER_SETTINGS, PresetReport, report

from .training_utils import load_recipe, quick_args, save_tiny_backbone

# The official code's training set-up, shared by every task: GPT-2, Adam (no schedule, no weight decay), batch 4,
# gradient clipping 1.0, 10000 iterations of 100 steps, no accumulation (batch 4 <= gpu_batch_size 16).
OFFICIAL_TRAINING = {
    "model": "gpt2",
    "batch_size": 4,
    "learning_rate": 1e-3,
    "max_grad_norm": 1.0,
    "weight_decay": 0.0,
    "lr_scheduler": "constant",
    "warmup_steps": 0,
    "gradient_accumulation_steps": 1,
    "max_steps": 1_000_000,
    "num_layers": None,
    "init": "pretrained",
    "finetune": "fpt",
}
CONTINUOUS = {"input_dropout": 0.1, "embedding_init": "scaled"}  # fpt.py: nn.Dropout(0.1) after the input Linear
SYMBOLIC = {"input_dropout": 0.0, "embedding_init": "normal"}  # fpt.py: nn.Embedding, N(0, 1), no dropout after it

# Per recipe: (training values beyond OFFICIAL_TRAINING, the recipe's load_task keyword arguments that must match).
OFFICIAL: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "bit_xor": (CONTINUOUS, {"n_bits": 5, "n_strings": 2, "patch_size": 5, "values": "01", "stream": True}),
    "bit_memory": (
        CONTINUOUS,
        {"n_bits": 1000, "n_strings": 5, "patch_size": 50, "mask_prob": 0.5, "stream": True, "num_train": None},
    ),
    "listops": (
        SYMBOLIC,
        {"formulation": "official", "max_tokens": 512, "eval_split": "validation", "length_policy": None},
    ),
    "mnist": (CONTINUOUS, {"patch_size": 4, "num_train": None, "num_eval": None, "source": "ylecun/mnist"}),
    "cifar10": (CONTINUOUS, {"patch_size": 4, "augment": True, "num_train": None, "source": "uoft-cs/cifar10"}),
    "cifar10_lra": (CONTINUOUS, {"patch_size": 1, "augment": True, "num_train": None, "source": "uoft-cs/cifar10"}),
    "homology": (
        {**SYMBOLIC, "learning_rate": 1e-4},  # the paper: 1e-4 for remote homology
        {"vocabulary": "tape", "max_tokens": 1024, "length_policy": "drop", "eval_split": "valid", "num_train": None},
    ),
}


class Captured:
    """What a recipe passed to ``load_task`` and ``train`` (both stubbed: nothing is loaded or trained)."""

    task: dict[str, Any]
    args: argparse.Namespace


@pytest.fixture
def parse_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """``run(recipe, *argv)``: run the recipe's ``main`` up to ``train`` and return what it would train with."""

    def run(recipe: str, *argv: str) -> Captured:
        captured = Captured()

        def load_task(name: str, **kwargs: Any) -> str:
            captured.task = kwargs
            return name

        def train(task: Any, args: argparse.Namespace) -> dict[str, float]:
            captured.args = args
            return {}

        monkeypatch.setattr(fpt_peft.data, "load_task", load_task)
        monkeypatch.setattr(fpt_peft.training, "train", train)
        load_recipe(recipe).main(["--output-dir", str(tmp_path / "out"), *argv])
        return captured

    return run


@pytest.mark.parametrize("recipe", sorted(OFFICIAL))
def test_paper_preset_parses_to_the_official_values(recipe: str, parse_only: Any) -> None:
    captured = parse_only(recipe, "--preset", "paper")
    training, data = OFFICIAL[recipe]
    expected = {**OFFICIAL_TRAINING, **training}
    parsed = FPTTrainingArguments.from_namespace(captured.args)
    assert {k: getattr(parsed, k) for k in expected} == expected
    assert {k: captured.task[k] for k in data} == data
    assert captured.args.preset == "paper"
    # Every value the preset names is an option of the recipe, and nothing differs (ListOps: LRA's files are the
    # user's --data-dir, so generated data is reported).
    assert all(hasattr(captured.args, s.dest) for s in PAPER_SETTINGS[recipe])
    preset = captured.args.preset_report
    if recipe == "listops":
        assert preset.differences == ("--data-dir not given (paper: LRA's basic_*.tsv files)",)
    else:
        assert preset.differences == () and preset.line() == "preset paper: the paper's set-up"


@pytest.mark.parametrize("recipe", [*sorted(OFFICIAL), "digits", "time_series"])
def test_default_preset_changes_nothing(recipe: str, parse_only: Any) -> None:
    plain, named = parse_only(recipe), parse_only(recipe, "--preset", "default")
    assert plain.task == named.task and vars(plain.args) == vars(named.args)
    assert FPTTrainingArguments.from_namespace(plain.args).model == "minilm" or recipe == "cifar10_lra"


def test_explicit_flags_win_over_the_preset(parse_only: Any) -> None:
    captured = parse_only(
        "bit_memory", "--preset", "paper", "--model", "minilm", "--max-steps", "500", "--no-stream", "--lr", "3e-4"
    )
    parsed = FPTTrainingArguments.from_namespace(captured.args)
    assert (parsed.model, parsed.max_steps, parsed.learning_rate, parsed.batch_size) == ("minilm", 500, 3e-4, 4)
    assert captured.task["stream"] is False and captured.task["n_bits"] == 1000
    assert captured.args.preset_report.line() == (
        "preset paper: differs from the paper in: --model minilm (paper: gpt2), --learning-rate 0.0003 "
        "(paper: 0.001), --max-steps 500 (paper: 1000000), --stream off (paper: on)"
    )
    augment = parse_only("cifar10", "--preset", "paper", "--no-augment", "--patch-size", "8")
    assert augment.task["augment"] is False and augment.task["patch_size"] == 8
    policy = parse_only("homology", "--preset", "paper", "--length-policy", "truncate", "--eval-split", "test")
    assert (policy.task["length_policy"], policy.task["eval_split"]) == ("truncate", "test")
    assert policy.args.preset_report.differences == (
        "--length-policy truncate (paper: drop)",
        "--eval-split test (paper: valid)",
    )


def test_default_line_lists_every_difference(parse_only: Any) -> None:
    xor = parse_only("bit_xor").args.preset_report
    assert xor.line() == (
        "preset default: differs from the paper in: --model minilm (paper: gpt2), --batch-size 32 (paper: 4), "
        "--max-steps 600 (paper: 1000000), --input-dropout 0 (paper: 0.1), --n-bits 10 (paper: 5), --values pm1 "
        "(paper: 01), --stream off (paper: on)"
    )
    homology = parse_only("homology").args.preset_report.differences
    assert homology == (
        "--model minilm (paper: gpt2)",
        "--batch-size 8 (paper: 4)",
        "--max-steps 10000 (paper: 1000000)",
        "--embedding-init scaled (paper: normal)",
        "--vocabulary compact (paper: tape)",
        "--max-tokens 512 (paper: 1024)",
        "--length-policy truncate (paper: drop)",
        "--eval-split test (paper: valid)",
    )
    # ListOps: --formulation official implies the official cut at 512, spelled as an alias of the validation split.
    listops = parse_only("listops", "--preset", "paper", "--eval-split", "val", "--data-dir", "lra").args
    assert listops.preset_report.differences == ()


def test_non_paper_recipes_refuse_the_paper_preset(parse_only: Any, capsys: pytest.CaptureFixture[str]) -> None:
    for recipe in ("digits", "time_series"):
        with pytest.raises(SystemExit, match=r"^2$") as exit:
            parse_only(recipe, "--preset", "paper")
        assert exit.value.code == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(errors) == 1 and f"'paper' is not available in {recipe}" in errors[0]
        line = parse_only(recipe).args.preset_report.line()
        assert line == "preset default: this task is not one of the paper's (no paper set-up to compare with)"


@pytest.mark.parametrize(
    ("recipe", "argv", "message"),
    [
        ("listops", ["--input-dropout", "0.1"], "--input-dropout 0.1: listops feeds symbols"),
        ("homology", ["--truncation"], "--truncation contradicts --length-policy drop (set by --preset paper"),
        ("mnist", ["--embedding-init", "normal"], "--embedding-init normal: mnist feeds continuous values"),
        ("bit_xor", ["--preset", "best"], "argument --preset: invalid choice: 'best'"),
    ],
)
def test_bad_combinations_give_one_error_line(
    recipe: str, argv: list[str], message: str, parse_only: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit, match=r"^2$") as exit:
        parse_only(recipe, "--preset", "paper", *argv)
    assert exit.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors


def test_report_counts_processes_and_mixed_precision() -> None:
    args = argparse.Namespace(
        preset="paper", **{s.dest: s.value for s in PAPER_SETTINGS["mnist"]}, mixed_precision="bf16"
    )
    assert report("mnist", args, {}, world_size=1).differences == ("--mixed-precision bf16 (paper: fp32)",)
    args.mixed_precision = None
    assert report("mnist", args, {}, world_size=2).differences == (
        "2 processes: 8 examples per step (paper: 1 process, 4)",
    )
    assert PresetReport("default", (), paper_task=False).as_json() == {
        "preset": "default",
        "preset_differences": None,
    }


def test_paper_preset_run_prints_and_saves_the_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = save_tiny_backbone(tmp_path / "tiny")
    out = tmp_path / "run"
    argv = [*quick_args(tiny, out, steps=2), "--preset", "paper", "--num-eval", "8"]
    metrics = load_recipe("bit_xor").main(argv)
    assert metrics["step"] == 2
    differences = ["--model a local folder (paper: gpt2)", "--max-steps 2 (paper: 1000000)"]
    line = "preset paper: differs from the paper in: " + ", ".join(differences)
    assert line in capsys.readouterr().out.splitlines()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["preset"] == "paper" and saved["preset_differences"] == differences and saved["step"] == 2
    card = (out / "adapter" / "README.md").read_text()
    assert "| `preset` | `paper` |" in card
    assert "the set-up differs from the paper's (Lu et al., 2021) in:" in card
    assert all(f"- {d}" in card for d in differences)
    preset_section = card[card.index("Preset `paper`") : card.index("## Results")]
    assert tiny not in preset_section and tiny not in (out / "metrics.json").read_text()  # no path of this machine
