"""Helpers for the training and recipe tests: tiny saved models, tiny data in the Hub schemas, adapter checks."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file

from fpt_peft.checkpoints import latest_checkpoint
from fpt_peft.data import TaskData, load_task
from fpt_peft.training import EpochSampler

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def save_tiny_backbone(folder: Path, family: str = "bert", positions: int = 64, dropout: bool = True) -> str:
    """Save a seeded tiny backbone (``AutoModel``) to ``folder``; returns the folder as a string. ``dropout=False``
    sets every dropout probability to 0 (so that runs on 1 and 2 processes can agree)."""
    if family == "bert":
        config: transformers.PretrainedConfig = transformers.BertConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=positions,
            vocab_size=50,
        )
    else:
        config = transformers.GPT2Config(
            n_layer=2, n_embd=32, n_head=4, n_positions=positions, vocab_size=50, bos_token_id=0, eos_token_id=0
        )
    if not dropout:
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
            if hasattr(config, name):
                setattr(config, name, 0.0)
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    return str(folder)


def load_recipe(name: str) -> ModuleType:
    """Import ``recipes/<name>.py`` as a module (its ``main(argv)`` runs the recipe in this process)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quick_args(model: str, output_dir: Path, *extra: str, steps: int = 3) -> list[str]:
    """Command-line arguments for a run of a few steps on a tiny model."""
    return [
        "--model",
        model,
        "--output-dir",
        str(output_dir),
        "--max-steps",
        str(steps),
        "--batch-size",
        "4",
        "--eval-every",
        "0",
        "--save-every",
        "0",
        "--log-every",
        "1",
        *extra,
    ]


def write_image_parquet(folder: Path, column: str, size: int, mode: str, n: int = 12) -> str:
    """Random images in a Hub image dataset's schema (``column``, ``label``) as train/test parquet files."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if mode == "L" else (size, size, 3)
    features = datasets.Features({column: datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    for split in ("train", "test"):
        images = [PIL.Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode) for _ in range(n)]
        labels = rng.integers(0, 10, n).tolist()
        data = datasets.Dataset.from_dict({column: images, "label": labels}, features=features)
        data.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return str(folder)


def write_homology_parquet(folder: Path, n: int = 12, num_folds: int = 1195) -> str:
    """Random protein sequences in ``proteinglm/fold_prediction``'s schema (``seq``, ``label``)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        seqs = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), int(rng.integers(5, 30)))) for _ in range(n)]
        labels = rng.integers(0, num_folds, n).tolist()
        datasets.Dataset.from_dict({"seq": seqs, "label": labels}).to_parquet(str(folder / f"{split}.parquet"))
    return str(folder)


def poisoned_xor(n: int, seed: int, batch_size: int, step: int, rank: int, world: int) -> tuple[TaskData, int]:
    """Bit XOR whose example in ``rank``'s batch of ``step`` (1-based) holds a NaN; returns (task, example index).

    Follows the trainer's data order (:class:`EpochSampler`, no gradient accumulation, first epoch); the task has a
    validation split of its own (its eval examples), so no validation examples are carved from the training ones.
    """
    task = load_task("bit_xor", num_train=n, num_eval=16, n_bits=5, patch_size=5)
    order = list(EpochSampler(n, seed))
    batch = (step - 1) * world + rank  # Accelerate gives process r the batches r, r + world, ...
    index = order[batch * batch_size + 3]
    embeds = np.asarray(task.train["inputs_embeds"], dtype=np.float32)
    embeds[index, 0, 1] = np.nan
    train = datasets.Dataset.from_dict({"inputs_embeds": embeds, "labels": np.asarray(task.train["labels"])})
    return TaskData(spec=task.spec, train=train.with_format("torch"), eval=task.eval, validation=task.eval), index


def model_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model inputs of a batch."""
    return {k: v for k, v in batch.items() if k in ("inputs_embeds", "input_ids", "attention_mask")}


def assert_adapter_reloads(output_dir: Path, model: str, task: TaskData, metrics: dict[str, float]) -> None:
    """The saved adapter reloads onto a fresh base with the trained weights and reproduces the final evaluation."""
    base = transformers.AutoModel.from_pretrained(model)
    reloaded = PeftModel.from_pretrained(base, str(output_dir / "adapter")).eval()
    checkpoint = latest_checkpoint(output_dir / "checkpoints")
    assert checkpoint is not None
    trained = load_file(str(checkpoint / "model.safetensors"))  # the final training state
    state = reloaded.state_dict()
    assert trained and all(torch.equal(state[k], v) for k, v in trained.items())
    predictions, labels, losses = [], [], []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(task.eval, batch_size=64):
            logits = reloaded(**model_batch(batch)).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), batch["labels"].reshape(-1), reduction="none"
            )
            predictions.append(logits.argmax(-1))
            labels.append(batch["labels"])
            losses.append(loss.reshape(len(batch["labels"]), -1).mean(1))
    correct = torch.cat(predictions) == torch.cat(labels)
    metric = task.spec.metric
    assert abs(float(correct.double().mean()) - metrics[metric]) < 1e-9
    assert abs(float(torch.cat(losses).mean()) - metrics["eval_loss"]) < 1e-4


def run_python(args: list[str], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python <args>`` from the repository root, offline; fails the test on timeout."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=offline_env(), capture_output=True, text=True, timeout=timeout, **kwargs
    )


def offline_env() -> dict[str, str]:
    """The environment for subprocesses: offline, with the repository importable, and Python's tracebacks of every
    thread printed if a process dies of a fatal signal (an abort in native code says where Python was)."""
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
    return {**os.environ, **env}
