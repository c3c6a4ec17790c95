"""Faults in training: kills at any moment, unwritable or full output folders, NaN and Inf, bf16 against fp32.

The kill, two-process and other-user scenarios run in real processes (tests/fault_worker.py, one worker that forks a
child per training process); the rest runs in this process on a tiny BERT.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

import fpt_peft.training as training
from fpt_peft import adapter_files as integrity
from fpt_peft.adapter_save import estimate_save_bytes
from fpt_peft.checkpoints import (
    LEGACY_FILES,
    MANIFEST_NAME,
    CheckpointError,
    checkpoint_bytes,
    estimate_checkpoint_bytes,
    latest_checkpoint,
    list_checkpoints,
    remove_checkpoints,
    verify_checkpoint,
)
from fpt_peft.data import TaskData, load_task
from fpt_peft.modeling import build_model
from fpt_peft.training import FPTTrainingArguments, NonFiniteError, train

from .checkpoint_faults import SAVE_PHASES
from .training_utils import ROOT, offline_env, poisoned_xor, save_tiny_backbone

# End-to-end: real processes and training runs. `make test-slow` runs them (and CI).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and far faster than on two when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def xor() -> TaskData:
    return load_task("bit_xor", num_train=256, num_eval=32, n_bits=5, patch_size=5)


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The real-process scenarios, in one worker (torch is imported once, then it forks)."""
    root = tmp_path_factory.mktemp("faults")
    command = [sys.executable, "-m", "tests.fault_worker", "kills", "ddp_nan", "permissions", "--root", str(root)]
    done = subprocess.run(command, cwd=ROOT, env=offline_env(), capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    results: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    for name, result in results.items():
        assert "crashed" not in result, (name, result)
    return results


def run(task: TaskData, model: str, out: Path, **kw: Any) -> dict[str, float]:
    defaults: dict[str, Any] = {"max_steps": 6, "batch_size": 8, "eval_every": 0, "save_every": 1, "log_every": 50}
    return train(task, FPTTrainingArguments(model=model, output_dir=str(out), **{**defaults, **kw}))


def count_forwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the forward calls of the model train() builds (0: it never trained)."""
    calls = [0]

    def build(*args: Any, **kwargs: Any) -> Any:
        model = build_model(*args, **kwargs)
        model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        return model

    monkeypatch.setattr(training, "build_model", build)
    return calls


# ---------------------------------------------------------------------------------------------------- kills
def test_a_run_killed_again_and_again_resumes_exactly(processes: dict[str, Any]) -> None:
    """SIGKILL at random moments and inside every phase of a checkpoint write; every resume is exact."""
    result = processes["kills"]
    records = result["records"]
    kills = [r for r in records if r["status"] == -9]
    assert len(kills) >= 24, records
    # Kills landed inside checkpoint writes: each phase once on purpose, and many at random (the child pauses
    # briefly in every phase, so a random moment is often inside a write).
    targeted = [r for r in kills if r["kind"] == "targeted"]
    assert sorted(r["last_phase"] for r in targeted) == sorted(SAVE_PHASES)
    assert sum(r["inside_write"] for r in kills if r["kind"] == "random") >= 8, records
    assert sum(r["inside_write"] for r in kills) >= 14, records
    # What the kills left behind was really there, and ignored: half-written checkpoints and half-done deletions.
    assert sum(any(not n.startswith(".tmp-delete-") for n in r["temp_left"]) for r in kills) >= 3, records
    assert any(n.startswith(".tmp-delete-") for r in kills for n in r["temp_left"]), records
    for record in records:
        # Every step_* folder left on disk is complete and verifies; no checkpoint that had been renamed into
        # place was lost (pruning never removed the newest); the next run resumed from the latest complete
        # checkpoint, with exactly its weights.
        assert record["bad_final_folders"] == [], record
        assert record["nothing_lost"], record
        assert record.get("resumed_step") == record["expected_step"], record
        assert record.get("resumed_exact") is (True if record["expected_step"] else None), record
    assert result["finished"] and result["straight_status"] == 0
    assert result["identical"] and result["metrics_identical"]  # bit-identical to an uninterrupted run
    # The final adapter went through the atomic, verified save (its config records the weights' digest).
    assert result["adapter_has_digest"] and result["adapter_leftovers"] == []


def test_damaged_checkpoints_are_skipped_and_incomplete_ones_replaced(
    tiny: str, xor: TaskData, tmp_path: Path
) -> None:
    run(xor, tiny, tmp_path, max_steps=4, keep_checkpoints=3)
    checkpoints = tmp_path / "checkpoints"
    good = load_file(str(checkpoints / "step_000004/model.safetensors"))
    weights = checkpoints / "step_000004/optimizer.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # bit rot after the save: same size, other bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not have the SHA-256 recorded"):
        verify_checkpoint(checkpoints / "step_000004")
    (checkpoints / "step_000005").mkdir()  # a folder with a checkpoint's name but no manifest: not complete
    assert latest_checkpoint(checkpoints) == checkpoints / "step_000004"  # sizes match: only digests tell
    metrics = run(xor, tiny, tmp_path, max_steps=5, keep_checkpoints=3, resume=True)
    assert metrics["step"] == 5
    assert (checkpoints / "step_000004.damaged").is_dir()  # kept for inspection, never listed
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step_000003", "step_000004", "step_000005"]
    for folder in list_checkpoints(checkpoints):
        verify_checkpoint(folder)
    redone = load_file(str(checkpoints / "step_000004/model.safetensors"))  # step 4 again, from step 3
    assert good.keys() == redone.keys() and all(torch.equal(good[k], redone[k]) for k in good)


def test_which_folders_count_as_complete_checkpoints(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    legacy = root / "step_000010"  # written by fpt-peft 0.1.0 (no manifest): complete when its files are there
    legacy.mkdir(parents=True)
    for name in LEGACY_FILES:
        (legacy / name).write_bytes(b"x")
    partial = root / "step_000020"  # a 0.1.0 checkpoint half-deleted by its pruning
    partial.mkdir()
    (partial / "optimizer.bin").write_bytes(b"x")
    truncated = root / "step_000030"  # a manifest whose files do not have the recorded sizes
    truncated.mkdir()
    (truncated / "model.safetensors").write_bytes(b"xy")
    files = {"model.safetensors": {"bytes": 3, "sha256": "0" * 64}}
    (truncated / MANIFEST_NAME).write_text(json.dumps({"format": 1, "step": 30, "files": files}))
    (root / ".tmp-step_000040").mkdir()
    (root / ".tmp-delete-step_000050").mkdir()
    assert list_checkpoints(root) == [legacy]
    with pytest.raises(CheckpointError, match="has 2 bytes, 3 were written"):
        verify_checkpoint(truncated)


def test_removing_all_checkpoints_is_atomic(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    (root / "step_000001").mkdir(parents=True)
    (tmp_path / ".tmp-removed-checkpoints" / "step_000009").mkdir(parents=True)  # left by a kill half-way
    remove_checkpoints(root)
    assert os.listdir(tmp_path) == []
    remove_checkpoints(root)  # nothing there: nothing to do


# ---------------------------------------------------------------------------------------------------- output folder
def test_an_output_dir_under_a_file_fails_before_training(
    tiny: str, xor: TaskData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forwards = count_forwards(monkeypatch)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"is a file, not a directory.*Checked before training"):
        run(xor, tiny, tmp_path / "file" / "out")
    assert forwards == [0]


def test_a_user_without_write_permission_fails_before_training(
    processes: dict[str, Any], tiny: str, xor: TaskData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = processes["permissions"]
    if "skipped" in result:  # not root: permission bits apply to this process itself
        forwards = count_forwards(monkeypatch)
        folder = tmp_path / "readonly"
        folder.mkdir(mode=0o555)
        with pytest.raises(PermissionError, match=f"'{folder}' is not writable.*Checked before training"):
            run(xor, tiny, folder / "run")
        assert forwards == [0]
        return
    assert result["uid"] == 65534
    readonly = result["readonly"]
    assert readonly["type"] == "PermissionError" and readonly["errno"] == errno.EACCES
    assert (
        f"Cannot save to '{result['base']}/readonly/run': '{result['base']}/readonly' is not writable"
        in (readonly["message"])
    )
    assert "Checked before training: pass a writable --output-dir" in readonly["message"]
    assert result["readonly_untouched"] and result["writable"]["step"] == 2  # same user, writable folder: trains


def test_a_full_disk_fails_before_training(
    tiny: str, xor: TaskData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_model(xor.spec, tiny, seed=0)
    one, adapter = estimate_checkpoint_bytes(model), estimate_save_bytes(model)
    needed = 3 * one + adapter  # two kept checkpoints, one being written, the adapter
    usage = shutil.disk_usage(tmp_path)
    free = [needed - 1]
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=free[0]))
    forwards = count_forwards(monkeypatch)
    with pytest.raises(OSError, match=f"about {needed:,} bytes are needed") as caught:
        run(xor, tiny, tmp_path / "out")
    assert caught.value.errno == errno.ENOSPC and forwards == [0]
    assert f"2 checkpoint(s) plus one being written (about {one:,} bytes each)" in str(caught.value)
    assert not (tmp_path / "out").exists()
    free[0] = needed  # just enough: trains
    assert run(xor, tiny, tmp_path / "out", max_steps=2)["step"] == 2


def test_the_checkpoint_size_estimate_is_realistic(tiny: str, xor: TaskData, tmp_path: Path) -> None:
    for finetune in ("fpt", "full"):
        run(xor, tiny, tmp_path / finetune, max_steps=2, finetune=finetune)
        actual = checkpoint_bytes(tmp_path / finetune / "checkpoints/step_000002")
        estimate = estimate_checkpoint_bytes(build_model(xor.spec, tiny, seed=0, finetune=finetune))
        assert actual <= estimate <= 3 * actual, (finetune, actual, estimate)  # tiny models: margins dominate
        # The final adapter went through fpt-peft's atomic save (save_adapter), which records the weights' digest.
        config = json.loads((tmp_path / finetune / "adapter/adapter_config.json").read_text())
        assert len(config["weights_sha256"]) == 64
        weights = load_file(tmp_path / finetune / "adapter/adapter_model.safetensors")
        assert config["weights_sha256"] == integrity.digest(weights)
        assert not list((tmp_path / finetune).glob(".tmp-*"))  # nothing left beside it


# ---------------------------------------------------------------------------------------------------- numerics
def test_nan_in_the_inputs_is_reported_with_its_step(tiny: str, tmp_path: Path) -> None:
    task, _ = poisoned_xor(256, seed=0, batch_size=8, step=7, rank=0, world=1)
    with pytest.raises(NonFiniteError, match="inputs_embeds contain NaN or Inf in the batch of step 7:") as caught:
        run(task, tiny, tmp_path, max_steps=20)
    assert (caught.value.step, caught.value.kind) == (7, "inputs")
    assert "the last complete checkpoint, " in str(caught.value) and "step_000006', is intact" in str(caught.value)
    checkpoints = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step_000005", "step_000006"]
    verify_checkpoint(checkpoints / "step_000006")
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize(
    ("clip", "kind", "message"),
    [
        (1.0, "gradients", r"Non-finite gradient norm \(NaN or Inf\) at step \d+, with a finite loss"),
        (0.0, "weights", r"Trainable weights are non-finite \(NaN or Inf\) after step \d+"),  # no norm computed
    ],
)
def test_a_diverging_learning_rate_is_reported_with_its_step(
    tiny: str, xor: TaskData, tmp_path: Path, clip: float, kind: str, message: str
) -> None:
    # Adam moves each weight by about the learning rate per step and the norms rescale, so the loss of this model
    # stays finite (if huge: ~1e12 after 60 steps at 1e6, ~1e24 at 1e12); at 1e16 it overflows within steps.
    with pytest.raises(NonFiniteError, match=message) as caught:
        run(xor, tiny, tmp_path, max_steps=30, learning_rate=1e16, max_grad_norm=clip)
    step = caught.value.step
    assert caught.value.kind == kind and 2 <= step <= 10
    assert f"--learning-rate 1e+16, --max-grad-norm {clip:g}" in str(caught.value)
    last = latest_checkpoint(tmp_path / "checkpoints")
    assert last is not None and last.name == f"step_{step - 1:06d}"  # saved before the divergence, not after
    weights = load_file(str(last / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_poisoned_weight_is_reported_and_the_last_good_checkpoint_resumes(
    tiny: str, xor: TaskData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def poisoned(*args: Any, **kwargs: Any) -> Any:
        model = build_model(*args, **kwargs)
        weight = next(p for n, p in model.named_parameters() if p.requires_grad and "LayerNorm" in n)
        calls = [0]

        def poison(*_: Any) -> None:
            calls[0] += 1
            if calls[0] == 7:  # the 7th batch: with 2 batches per step, step 4
                with torch.no_grad():
                    weight[0] = float("inf")

        model.register_forward_pre_hook(poison)
        return model

    options: dict[str, Any] = {"max_steps": 8, "gradient_accumulation_steps": 2, "log_every": 4}
    monkeypatch.setattr(training, "build_model", poisoned)
    with pytest.raises(NonFiniteError, match=r"Non-finite training loss \(NaN or Inf\) at step 4, with finite") as c:
        run(xor, tiny, tmp_path, **options)
    assert c.value.kind == "loss" and "Nothing after step 3 was saved" in str(c.value)
    checkpoints = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step_000002", "step_000003"]
    monkeypatch.setattr(training, "build_model", build_model)  # the weight fixed: resume from the last good state
    assert run(xor, tiny, tmp_path, resume=True, **options)["step"] == 8


def test_nan_is_reported_by_every_process(processes: dict[str, Any]) -> None:
    """Two processes (gloo); only rank 1's batch of step 5 holds a NaN. Both raise the same error; none hangs."""
    result = processes["ddp_nan"]
    assert result["statuses"] == [0, 0], result  # both returned (a hang would have been killed: None)
    ranks = result["ranks"]
    assert [r["raised"] for r in ranks] == ["NonFiniteError", "NonFiniteError"], ranks
    assert [(r["step"], r["kind"]) for r in ranks] == [(5, "inputs"), (5, "inputs")]
    assert ranks[0]["message"] == ranks[1]["message"]
    assert "inputs_embeds contain NaN or Inf in the batch of step 5 (process 1)" in ranks[0]["message"]
    assert result["latest"] == 4 and result["bad_final_folders"] == [] and not result["adapter_written"]


# ---------------------------------------------------------------------------------------------------- bf16
# Measured on CPU (torch 2.13), bit XOR with 5-bit strings, tiny BERT, batch 16, seeds 0-2, bf16 autocast against
# fp32 (relative differences unless marked absolute). FPT, 60 steps, lr 1e-2: eval loss within 8.8e-5, train loss
# (mean of the last 10 steps) within 1.1e-4, per-bit accuracy within 0.0016 absolute, exact match equal, trainable
# weights within 0.25% (L2). Full finetuning, 150 steps, lr 3e-3 (learns: 72-79% per-bit accuracy): eval loss within
# 0.86%, train loss within 0.80%, per-bit accuracy within 0.0016 absolute, exact match within 0.012 absolute,
# weights within 3.9%. The tolerance leaves a margin of 2.3x or more on each.
BF16_TOLERANCE = {"loss_rel": 0.02, "accuracy_abs": 0.02, "exact_match_abs": 0.04, "weights_rel": 0.1}


@pytest.mark.parametrize(("finetune", "steps", "lr"), [("fpt", 60, 1e-2), ("full", 150, 3e-3)])
def test_bf16_agrees_with_fp32_within_the_documented_tolerance(
    tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finetune: str, steps: int, lr: float
) -> None:
    task = load_task("bit_xor", num_train=1024, num_eval=256, n_bits=5, patch_size=5)
    logged: list[dict[str, float]] = []
    original_log = Accelerator.log

    def log(self: Accelerator, values: dict[str, float], **kwargs: Any) -> None:
        logged.append(values)
        original_log(self, values, **kwargs)

    monkeypatch.setattr(Accelerator, "log", log)
    runs = {}
    for precision in ("no", "bf16"):
        AcceleratorState._reset_state()  # Accelerate fixes the precision once per process
        try:
            metrics = run(
                task,
                tiny,
                tmp_path / precision,
                max_steps=steps,
                batch_size=16,
                learning_rate=lr,
                finetune=finetune,
                mixed_precision=precision,
                save_every=0,
                log_every=10,
            )
        finally:
            AcceleratorState._reset_state()
        train_loss = [v["train_loss"] for v in logged if "train_loss" in v][-1]  # mean of the last 10 steps
        weights = load_file(str(tmp_path / precision / "adapter/adapter_model.safetensors"))
        runs[precision] = (metrics, train_loss, weights)
    (fp32, fp32_train, fp32_weights), (bf16, bf16_train, bf16_weights) = runs["no"], runs["bf16"]
    tol = BF16_TOLERANCE
    assert abs(bf16["eval_loss"] - fp32["eval_loss"]) <= tol["loss_rel"] * fp32["eval_loss"], (fp32, bf16)
    assert abs(bf16_train - fp32_train) <= tol["loss_rel"] * fp32_train, (fp32_train, bf16_train)
    assert abs(bf16["per_bit_accuracy"] - fp32["per_bit_accuracy"]) <= tol["accuracy_abs"], (fp32, bf16)
    assert abs(bf16["exact_match"] - fp32["exact_match"]) <= tol["exact_match_abs"], (fp32, bf16)
    difference = sum(float((bf16_weights[k] - fp32_weights[k]).double().norm() ** 2) for k in fp32_weights) ** 0.5
    size = sum(float(w.double().norm() ** 2) for w in fp32_weights.values()) ** 0.5
    assert difference <= tol["weights_rel"] * size, difference / size
    assert difference > 0  # bf16 really ran (autocast changes the numbers)
    initial = get_peft_model_state_dict(build_model(task.spec, tiny, seed=0, finetune=finetune))
    assert any(not torch.equal(initial[k], fp32_weights[k]) for k in fp32_weights)  # and training really moved them
