"""``fpt-peft-compare``: FPT against its controls and classical baselines, rates chosen on validation, intervals over
seeds, resumable; and the controls themselves (no LM, shuffled tokens, shuffled weights) and the baselines."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from scipy import stats

from fpt_peft.arguments import FPTTrainingArguments
from fpt_peft.baselines import BASELINES, fit_baseline
from fpt_peft.compare import _choose, mean_ci95, verdict
from fpt_peft.controls import NoLM, shuffle_tokens
from fpt_peft.data import TaskSpec, load_task, own_data
from fpt_peft.modeling import build_model, load_backbone
from fpt_peft.selection import with_validation
from fpt_peft.training import train

from .helpers import child_processes, perturb_adapter
from .test_own_data import write_series, write_table
from .training_utils import ROOT, offline_env, save_tiny_backbone


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_backbone(tmp_path_factory.mktemp("bert"), "bert", 64, dropout=False)


def _compare(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The installed ``fpt-peft-compare`` console script, offline."""
    script = Path(sys.executable).with_name("fpt-peft-compare")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "fpt_peft.compare"]
    return subprocess.run(
        [*command, *args], cwd=ROOT, env=offline_env(), capture_output=True, text=True, timeout=timeout
    )


def _one_error(done: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return errors[0]


def test_compare_on_a_csv_writes_every_field_chooses_rates_on_validation_and_says_what_the_interval_allows(
    tiny: str, tmp_path: Path
) -> None:
    table = write_table(tmp_path / "heart.csv", rows=120)
    out = tmp_path / "compare"
    common = ["--data", str(table), "--label-column", "target", "--model", tiny, "--out-dir", str(out)]
    done = _compare(*common, "--max-steps", "6", "--eval-every", "2", "--lrs", "1e-3", "3e-2", "--seeds", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((out / "compare.json").read_text())
    arms = ["fpt_pretrained", "fpt_random", "no_lm", "majority", "logistic_regression", "random_forest"]
    assert list(data["arms"]) == arms and list(data["differences"]) == arms[1:]
    for arm, row in data["arms"].items():
        assert len(row["test"]) == len(row["validation"]) == len(row["lr"]) == 2
        assert row["mean"] == pytest.approx(sum(row["test"]) / 2)
        low, high = row["ci95"]
        assert 0 <= low <= row["mean"] <= high <= 1, arm
    reference = data["arms"]["fpt_pretrained"]["test"]
    for arm, row in data["differences"].items():
        paired = [a - b for a, b in zip(reference, data["arms"][arm]["test"], strict=True)]
        assert row["per_seed"] == pytest.approx(paired) and row["mean"] == pytest.approx(sum(paired) / 2)
        assert row["verdict"] == verdict(row["ci95"], baseline=arm in BASELINES)
    # each seed's rate is the one with the best validation score; its test score is that run's
    for arm in ("fpt_pretrained", "fpt_random", "no_lm"):
        for seed in (0, 1):
            runs = [r for r in data["runs"] if r["arm"] == arm and r["seed"] == seed]
            assert sorted(r["lr"] for r in runs) == [1e-3, 3e-2]
            best = max(runs, key=lambda r: (r["validation"], -r["validation_loss"], -r["lr"]))
            assert data["arms"][arm]["lr"][seed] == best["lr"]
            assert data["arms"][arm]["test"][seed] == best["test"]
    # the classical baselines computed something real: the target is linear in two features
    assert data["arms"]["logistic_regression"]["mean"] >= data["arms"]["majority"]["mean"] + 0.25
    provenance = data["provenance"]
    assert len(provenance["git"]["commit"]) == 40 and isinstance(provenance["git"]["dirty"], bool)
    assert provenance["versions"]["torch"] == torch.__version__ and provenance["device"]
    assert data["settings"]["lrs"] == [1e-3, 3e-2] and data["settings"]["validation_fraction"] == 0.1
    markdown = (out / "compare.md").read_text()
    assert "| fpt_pretrained |" in markdown and "validation split of 0.1 of the training data" in markdown
    assert all(row["verdict"] in markdown for row in data["differences"].values())
    assert (out / "compare.png").read_bytes().startswith(b"\x89PNG")
    assert not list(out.glob("runs/*/adapter")) and not list(out.glob("runs/*/checkpoints"))
    # the folder now holds a comparison: without --resume it is refused before anything runs
    again = _one_error(_compare(*common, "--max-steps", "6"))
    assert "--out-dir" in again and "--resume" in again


@pytest.mark.slow
def test_resume_runs_only_what_is_missing_and_ends_with_the_same_numbers(tiny: str, tmp_path: Path) -> None:
    table = write_table(tmp_path / "t.csv")
    out = tmp_path / "compare"
    args = ["--data", str(table), "--label-column", "target", "--model", tiny, "--out-dir", str(out)]
    args += ["--max-steps", "4", "--eval-every", "2", "--lrs", "1e-3", "--seeds", "2"]
    args += ["--arms", "fpt_pretrained", "shuffled", "majority"]
    assert (first := _compare(*args)).returncode == 0, first.stderr[-3000:]
    before = json.loads((out / "compare.json").read_text())
    (out / "runs" / "shuffled-seed1-lr0.001.json").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert (resumed := _compare(*args, "--resume")).returncode == 0, resumed.stderr[-3000:]
    after = json.loads((out / "compare.json").read_text())
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json") if p.name in kept} == kept
    assert (out / "runs" / "shuffled-seed1-lr0.001.json").exists()
    assert after["arms"] == before["arms"] and after["differences"] == before["differences"]
    other = _one_error(_compare(*args[:-2], "--seeds", "3", "--resume"))
    assert "other settings" in other


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_workers_end_when_the_comparison_is_killed(tiny: str, tmp_path: Path) -> None:
    """SIGKILL on the comparison (no clean-up runs) still ends its worker processes mid-run, not after their runs."""
    table = write_table(tmp_path / "t.csv")
    out = tmp_path / "compare"
    args = ["--data", str(table), "--label-column", "target", "--model", tiny, "--out-dir", str(out)]
    args += ["--max-steps", "100000", "--eval-every", "100000", "--lrs", "1e-3", "--seeds", "2", "--workers", "2"]
    command = [sys.executable, "-m", "fpt_peft.compare", *args, "--arms", "fpt_pretrained"]
    parent = subprocess.Popen(command, cwd=ROOT, env=offline_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while len(list(out.glob("runs/*/log.txt"))) < 2:  # both workers are inside a run
            assert parent.poll() is None and time.monotonic() < deadline, parent.stderr and parent.stderr.read()
            time.sleep(0.5)
        workers = child_processes(parent.pid)
        assert workers, "no worker processes found"
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while (alive := [pid for pid in workers if Path(f"/proc/{pid}").exists()]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, f"workers {alive} outlived the comparison"
    assert not list(out.glob("runs/*.json")), "a 100000-step run cannot have finished"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "bit_memory", "--data", "x.csv"], "exactly one of --task"),
        (["--task", "bit_memory", "--arms", "fpt_pretrained", "lasso"], "--arms: unknown ['lasso']"),
        (["--task", "bit_memory", "--lrs", "0"], "--lrs must all be finite and > 0"),
        (["--task", "bit_memory", "--validation-fraction", "0"], "--validation-fraction must be in (0, 1)"),
        (["--task", "bit_memory", "--arms", "fpt_random"], "--arms must include fpt_pretrained"),
        (
            ["--task", "bit_memory", "--arms", "fpt_pretrained", "logistic_regression"],
            "not a baseline of data that is neither a table, a series nor an image",
        ),
    ],
    ids=["task and data", "unknown arm", "rate", "validation", "no reference", "baseline of another kind"],
)
def test_mistakes_are_one_line_and_status_2(args: list[str], message: str, tmp_path: Path) -> None:
    error = _one_error(_compare(*args, "--out-dir", str(tmp_path / "out"), timeout=300))
    assert message in error


def test_intervals_are_student_t_and_verdicts_follow_them() -> None:
    mean, (low, high) = mean_ci95([0.5, 0.7, 0.9])
    half = stats.t.ppf(0.975, 2) * 0.2 / math.sqrt(3)
    assert mean == pytest.approx(0.7) and (low, high) == pytest.approx((0.7 - half, 0.7 + half))
    assert mean_ci95([0.9, 1.0, 1.0], bounds=(0, 1))[1][1] == 1.0 and mean_ci95([0.4])[1] is None
    assert verdict([0.01, 0.2]) == "helps" and verdict([-0.2, -0.01]) == "hurts"
    assert verdict([-0.01, 0.2]) == "no difference detected" and verdict([0.1, 0.2], baseline=True) == "better"
    runs = {1e-3: {"validation": 0.8, "validation_loss": 0.5}, 1e-2: {"validation": 0.8, "validation_loss": 0.4}}
    assert _choose(runs) == 1e-2  # a tie on the score goes to the lower validation loss
    assert _choose({**runs, 1e-4: {"validation": 0.9, "validation_loss": 0.9}}) == 1e-4


def test_no_lm_trains_through_the_training_loop_and_reloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = own_data(write_table(tmp_path / "t.csv", rows=200), label_column="target")
    model = NoLM.for_task(task.spec, hidden_size=16)
    args = FPTTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=60, eval_every=20, learning_rate=1e-2)
    metrics = train(task, args, model=model)
    assert "eval examples | the given NoLM | trainable" in capsys.readouterr().out  # not the --model it did not build
    assert metrics["accuracy"] >= 0.8  # a linear target: chance is about 0.5
    reloaded = NoLM.from_pretrained(tmp_path / "run" / "adapter")
    batch = task.eval.with_format("torch")[:8]
    with torch.no_grad():
        assert torch.equal(reloaded(inputs_embeds=batch["inputs_embeds"]).logits, model(**batch).logits)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["kept_step"] == metrics["kept_step"]
    other = FPTTrainingArguments(output_dir=str(tmp_path / "other"), init="random")
    with pytest.raises(ValueError, match=r"trains the model it is given; leave the model options"):
        train(task, other, model=NoLM.for_task(task.spec, hidden_size=16))


def test_shuffled_tokens_keep_each_example_s_tokens_and_its_padding() -> None:
    task = load_task("listops", num_train=16, num_eval=8, max_tokens=32)
    shuffled = shuffle_tokens(task, seed=0)
    before, after = (np.asarray(t.train.with_format("numpy")["input_ids"]) for t in (task, shuffled))
    mask = np.asarray(task.train.with_format("numpy")["attention_mask"])
    assert (np.sort(before, axis=1) == np.sort(after, axis=1)).all() and (before[mask == 0] == after[mask == 0]).all()
    assert (before != after).any(axis=1).mean() > 0.8
    assert list(shuffled.train["labels"]) == list(task.train["labels"])


def test_a_weight_shuffled_base_keeps_each_tensor_s_values_and_its_adapter_knows_it(tiny: str, tmp_path: Path) -> None:
    pretrained, shuffled = load_backbone(tiny), load_backbone(tiny, init="shuffled", seed=3)
    varied = 0
    for (name, a), b in zip(pretrained.named_parameters(), shuffled.parameters(), strict=True):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values), name
        if a.unique().numel() > 1:  # a tensor of one repeated value (zero biases, unit norms) cannot move
            varied += 1
            assert not torch.equal(a, b), name
    assert varied >= 16
    spec = TaskSpec(name="toy", input_dim=5, num_classes=3, max_tokens=4)
    model = build_model(spec, tiny, init="shuffled", seed=3).eval()
    perturb_adapter(model)
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (saved["base_init"], saved["base_init_seed"]) == ("shuffled", 3)
    inputs = torch.randn(2, 4, 5)
    again = PeftModel.from_pretrained(load_backbone(tiny, init="shuffled", seed=3), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(again(inputs_embeds=inputs).logits, model(inputs_embeds=inputs).logits)
    with pytest.raises(ValueError, match=r"weight-shuffled .*init='shuffled', seed=3"):
        PeftModel.from_pretrained(load_backbone(tiny), tmp_path / "adapter")


def test_baselines_fit_on_the_training_examples_and_score_with_the_task_metric(tmp_path: Path) -> None:
    series = with_validation(own_data(write_series(tmp_path / "series")), 0.2, seed=0)
    scores = fit_baseline("minirocket", series, seed=0)
    assert scores["test"] >= 0.9 and set(scores) == {"validation", "test"}  # sines of 3 frequencies
    bits = load_task("bit_memory", num_train=32, num_eval=16, n_bits=20, patch_size=5, n_strings=5)
    majority = fit_baseline("majority", bits, seed=0)
    assert 0.3 <= majority["test"] <= 0.7 and set(majority) == {"test"}  # per-bit accuracy of one guess per bit
    with pytest.raises(ValueError, match="Unknown baseline 'svm'"):
        fit_baseline("svm", bits, seed=0)
