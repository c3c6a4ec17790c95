"""Bad input fails early with an error that names the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModel, AutoModelForSequenceClassification

from fpt_peft import AdapterIntegrityError, FPTConfig

from .helpers import tiny_config


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = get_peft_model(AutoModel.from_config(tiny_config("gpt2")), FPTConfig(input_dim=6, output_dim=2))
    model.save_pretrained(tmp_path / "a")
    return tmp_path / "a"


def test_feature_width_must_equal_input_dim() -> None:
    model = get_peft_model(AutoModel.from_config(tiny_config("gpt2")), FPTConfig(input_dim=6, output_dim=2))
    with pytest.raises(ValueError, match=r"input_dim=6\); got \(2, 3, 7\)"):
        model(inputs_embeds=torch.randn(2, 3, 7))


def test_ids_must_lie_in_the_new_vocabulary() -> None:
    model = get_peft_model(AutoModel.from_config(tiny_config("bert")), FPTConfig(input_vocab_size=10, output_dim=2))
    with pytest.raises(ValueError, match=r"input_vocab_size=10\); got values in \[0, 10\]"):
        model(input_ids=torch.tensor([[0, 10]]))
    with pytest.raises(ValueError, match="input_vocab_size"):
        model(input_ids=torch.tensor([[-1, 3]]))


@pytest.mark.parametrize(("family", "capacity"), [("gpt2", 64), ("bert", 64), ("roberta", 64), ("opt", 64)])
def test_more_tokens_than_positions(family: str, capacity: int) -> None:
    model = get_peft_model(AutoModel.from_config(tiny_config(family)), FPTConfig(input_dim=3, output_dim=2))
    model(inputs_embeds=torch.randn(1, capacity, 3))
    with pytest.raises(ValueError, match=rf"{capacity + 1} tokens but .* hold {capacity} positions"):
        model(inputs_embeds=torch.randn(1, capacity + 1, 3))


def test_adapter_onto_a_base_of_another_width_or_architecture(saved: Path) -> None:
    wider = AutoModel.from_config(tiny_config("gpt2", n_embd=48))
    with pytest.raises(ValueError, match=r"width 32 \(gpt2\).*width 48"):
        PeftModel.from_pretrained(wider, saved)
    other = AutoModel.from_config(tiny_config("bert"))
    with pytest.raises(ValueError, match=r"made for a 'gpt2' model.*'bert' model"):
        PeftModel.from_pretrained(other, saved)


def test_missing_and_corrupted_weight_files(saved: Path) -> None:
    weights = saved / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    corrupted = rf"'{weights}' is corrupted or truncated and cannot be read"
    with pytest.raises(AdapterIntegrityError, match=corrupted):
        FPTConfig.from_pretrained(str(saved))
    with pytest.raises(AdapterIntegrityError, match=corrupted):
        PeftModel.from_pretrained(AutoModel.from_config(tiny_config("gpt2")), saved)
    weights.unlink()
    # A folder with only the config: the config loads; peft itself then finds no weights to load (its own error).
    assert FPTConfig.from_pretrained(str(saved)).input_dim == 6
    # peft then takes the folder for a Hub repo id (huggingface_hub refuses it) or says it finds no weights
    with pytest.raises((ValueError, OSError), match=r"Repo id must be in the form|[Cc]an't find|No such file"):
        PeftModel.from_pretrained(AutoModel.from_config(tiny_config("gpt2")), str(saved))


def test_weights_of_another_adapter_are_refused(saved: Path, tmp_path: Path) -> None:
    other = get_peft_model(
        AutoModel.from_config(tiny_config("gpt2")),
        FPTConfig(input_dim=6, output_dim=2, train_positions=False),
    )
    other.save_pretrained(tmp_path / "b")
    (saved / "adapter_model.safetensors").write_bytes((tmp_path / "b" / "adapter_model.safetensors").read_bytes())
    # The config records the digest of the weights saved with it: weights from another save are refused.
    with pytest.raises(AdapterIntegrityError, match=r"do not belong to its adapter_config\.json"):
        PeftModel.from_pretrained(AutoModel.from_config(tiny_config("gpt2")), saved)
    # Configs without a digest (older saves) still meet the structural check of the weights against the config.
    config_file = saved / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "weights_sha256": None}))
    with pytest.raises(ValueError, match=r"do not match its config.*missing \['wpe"):
        PeftModel.from_pretrained(AutoModel.from_config(tiny_config("gpt2")), saved)


def test_unknown_or_malformed_config_fields(saved: Path) -> None:
    config_file = saved / "adapter_config.json"
    original = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**original, "future_field": 1}))
    with pytest.warns(UserWarning, match=r"Unexpected keyword arguments \['future_field'\] for class FPTConfig"):
        loaded = PeftModel.from_pretrained(AutoModel.from_config(tiny_config("gpt2")), saved)  # dropped, loads
    assert not hasattr(loaded.peft_config["default"], "future_field")
    config_file.write_text(json.dumps({**original, "input_dim": "six"}))
    with pytest.raises(ValueError, match=r"input_dim must be an int"):
        PeftModel.from_pretrained(AutoModel.from_config(tiny_config("gpt2")), saved)
    config_file.write_text(json.dumps({**original, "input_dim": 2**40}))
    with pytest.raises(ValueError, match=r"input_dim must be an int in \[1, 16777216\]"):
        PeftModel.from_pretrained(AutoModel.from_config(tiny_config("gpt2")), saved)
    config_file.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        FPTConfig.from_pretrained(str(saved))
    # peft parses the file itself first, to find its peft_type
    with pytest.raises(json.JSONDecodeError, match="Expecting property name"):
        PeftModel.from_pretrained(AutoModel.from_config(tiny_config("gpt2")), saved)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_dim": 4, "input_vocab_size": 5}, "either input_dim .* or input_vocab_size"),
        ({"input_dim": 0}, r"input_dim must be an int in \[1"),
        ({"train_layer_norms": "yes"}, "train_layer_norms must be a bool"),
        ({"task_type": "SEQ_CLS", "output_dim": 3}, "output_dim adds an FPT output layer"),
        ({"task_type": "SEQ_CLS", "train_output": False}, "train_output=False is not supported"),
        ({"input_vocab_size": 5, "pad_token_id": 5}, r"pad_token_id must be an int in \[0, 5\)"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        FPTConfig(**kwargs)


def test_output_layer_needs_a_backbone() -> None:
    base = AutoModelForSequenceClassification.from_config(tiny_config("gpt2", num_labels=2))
    with pytest.raises(ValueError, match="already has a task head"):
        get_peft_model(base, FPTConfig(input_dim=3, output_dim=2))


def test_attention_mask_must_match_the_inputs() -> None:
    model = get_peft_model(AutoModel.from_config(tiny_config("bert")), FPTConfig(input_vocab_size=10, output_dim=2))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\); the inputs are .* \(2, 5\)"):
        model(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4, dtype=torch.long))


def test_position_parameters_must_exist_in_the_model() -> None:
    with pytest.raises(ValueError, match=r"position_parameters names 'embeddings\.nope'"):
        get_peft_model(
            AutoModel.from_config(tiny_config("bert")),
            FPTConfig(input_dim=3, target_modules=["LayerNorm"], position_parameters=["embeddings.nope"]),
        )
