"""Adapters a recipe saves are portable: they name their base by Hub id, carry a Hub-style model card and hold no
path of the machine that trained them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from peft import PeftModel

import fpt_peft
from fpt_peft.data import load_task
from fpt_peft.model_card import adapter_card, portable_command
from fpt_peft.modeling import load_backbone
from fpt_peft.pretrained import HUB_IDS, minilm_path
from fpt_peft.training import FPTTrainingArguments, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """Bit XOR for a few steps on the packaged MiniLM (the default model), as the recipe runs it."""
    out = tmp_path_factory.mktemp("portable") / "bit_xor"
    task = load_task("bit_xor", num_train=64, num_eval=32, n_bits=5, patch_size=5)
    args = FPTTrainingArguments(output_dir=str(out), max_steps=4, batch_size=8, eval_every=0, save_every=2)
    return out, train(task, args)


def test_saved_files_hold_no_path_of_this_machine(trained: tuple[Path, dict[str, float]]) -> None:
    out, _ = trained
    machine = {str(minilm_path()), str(Path(sys.prefix)), str(out), str(Path(__file__).resolve().parents[1])}
    machine |= {p for p in (os.environ.get("HOME"), os.environ.get("TMPDIR")) if p and len(p) > 1}
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "adapter_config.json" for p in files) and len(files) > 5
    for path in files:
        data = path.read_bytes()
        found = [m for m in machine if m.encode() in data]
        assert not found, f"{path.relative_to(out)} holds {found}"
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == HUB_IDS["minilm"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_the_hub_id_of_a_packaged_model_loads_the_packaged_copy_offline(
    trained: tuple[Path, dict[str, float]],
) -> None:
    out, _ = trained
    by_id = load_backbone(HUB_IDS["minilm"])  # HF_HUB_OFFLINE=1: the Hub is out of reach, the package is not
    packaged = load_backbone("minilm")
    assert all(
        torch.equal(a, b) for a, b in zip(by_id.state_dict().values(), packaged.state_dict().values(), strict=True)
    )
    model = PeftModel.from_pretrained(by_id, out / "adapter")  # what a user elsewhere does with the card's id
    assert fpt_peft.is_registered() and model.peft_config["default"].base_model_type == "bert"


def test_the_model_card_follows_the_hub_conventions(trained: tuple[Path, dict[str, float]]) -> None:
    out, metrics = trained
    card = ModelCard.load(out / "adapter" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["base_model"] == HUB_IDS["minilm"]
    assert {"fpt", "peft", "bit_xor"} <= set(data["tags"]) and data["metrics"] == ["per_bit_accuracy"]
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "fpt-bit-xor" and len(results) == 1
    assert results[0].metric_value == round(metrics["per_bit_accuracy"], 4)
    assert "import fpt_peft" in card.text and "PeftModel.from_pretrained" in card.text
    assert f'AutoModel.from_pretrained("{HUB_IDS["minilm"]}")' in card.text
    assert "accelerate launch" in card.text and "| `steps` | `4` |" in card.text


def test_card_metadata_names_hub_datasets_and_commands_carry_no_paths() -> None:
    card = adapter_card(
        task="mnist",
        base_model="gpt2",
        dataset="ylecun/mnist",
        metrics={"accuracy": 0.98, "step": 10},
        setup={"steps": 10},
        command="accelerate launch recipes/mnist.py",
    )
    assert card.data.to_dict()["datasets"] == ["ylecun/mnist"]
    assert card.data.eval_results[0].dataset_name == "ylecun/mnist"
    command = portable_command(["/home/me/fpt/recipes/mnist.py", "--data-dir", "/home/me/data", "--lr", "1e-3"])
    assert command == "accelerate launch recipes/mnist.py --data-dir PATH --lr 1e-3"
