"""Several FPT adapters (one per modality) on one frozen base: add, switch, disable, delete, save, reload, merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModel, AutoModelForSequenceClassification

from fpt_peft import FPTConfig

from .helpers import tiny_config

IMAGES = torch.randn(2, 4, 6)
SYMBOLS = torch.randint(0, 9, (2, 7))


def _two_adapters() -> PeftModel:
    torch.manual_seed(0)
    base = AutoModel.from_config(tiny_config("gpt2"))
    model = get_peft_model(base, FPTConfig(input_dim=6, output_dim=3), adapter_name="images")
    model.add_adapter("symbols", FPTConfig(input_vocab_size=9, output_dim=5))
    return model


def _trainable_adapters(model: torch.nn.Module) -> set[str]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {a for a in ("images", "symbols") if any(f".{a}." in n or n.endswith(f".{a}") for n in names)}


def test_only_the_active_adapter_trains_and_switching_changes_the_computation() -> None:
    model = _two_adapters()
    assert model.active_adapter == "images" and _trainable_adapters(model) == {"images"}
    assert model(inputs_embeds=IMAGES).logits.shape == (2, 3)
    model.set_adapter("symbols")
    assert _trainable_adapters(model) == {"symbols"}
    assert model(input_ids=SYMBOLS).logits.shape == (2, 5)
    with pytest.raises(ValueError, match="continuous inputs"):
        model.set_adapter("images") or model(input_ids=SYMBOLS)


def test_disable_runs_the_plain_base_model() -> None:
    model = _two_adapters()
    model.set_adapter("symbols")
    torch.manual_seed(0)
    plain = AutoModel.from_config(tiny_config("gpt2")).eval()
    model.eval()
    with model.disable_adapter(), torch.no_grad():
        hidden = model(input_ids=SYMBOLS).last_hidden_state
        assert torch.equal(hidden, plain(input_ids=SYMBOLS).last_hidden_state)
    with torch.no_grad():
        assert not torch.equal(model(input_ids=SYMBOLS).last_hidden_state, hidden)


def test_delete_adapter_removes_all_its_weights() -> None:
    model = _two_adapters()
    model.delete_adapter("images")
    assert not any(".images." in n or n.endswith(".images") for n, _ in model.named_parameters())
    assert model.active_adapter == "symbols"
    assert model(input_ids=SYMBOLS).logits.shape == (2, 5)


def test_save_all_and_reload_all(tmp_path: Path) -> None:
    model = _two_adapters().eval()
    with torch.no_grad():
        images = model(inputs_embeds=IMAGES).logits
        model.set_adapter("symbols")
        symbols = model(input_ids=SYMBOLS).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "images" / "adapter_model.safetensors").exists()
    assert (tmp_path / "symbols" / "adapter_model.safetensors").exists()
    torch.manual_seed(0)
    base = AutoModel.from_config(tiny_config("gpt2"))
    again = PeftModel.from_pretrained(base, tmp_path / "images", adapter_name="images")
    again.load_adapter(tmp_path / "symbols", adapter_name="symbols")
    again.eval()
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    # Same weights; kernels may round differently for differently allocated copies (seen: 6e-8).
    with torch.no_grad():
        torch.testing.assert_close(again(inputs_embeds=IMAGES).logits, images, rtol=0, atol=1e-6)
        again.set_adapter("symbols")
        torch.testing.assert_close(again(input_ids=SYMBOLS).logits, symbols, rtol=0, atol=1e-6)


def test_merge_and_unload_writes_norms_and_positions_into_the_base() -> None:
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(tiny_config("gpt2", num_labels=2, pad_token_id=0))
    model = get_peft_model(base, FPTConfig(task_type="SEQ_CLS"))
    for module in model.modules():
        if hasattr(module, "fpt_copies"):
            for p in module.fpt_copies["default"].parameters():
                p.data.add_(0.1)
    model.eval()
    ids = torch.randint(1, 50, (2, 6))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    merged = model.merge_and_unload()
    assert type(merged).__name__ == "GPT2ForSequenceClassification"
    assert not any("fpt_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-6)


def test_merge_and_unload_refuses_new_input_layers_before_touching_anything() -> None:
    model = _two_adapters()
    with pytest.raises(ValueError, match="has no place for"):
        model.merge_and_unload()
    assert model(inputs_embeds=IMAGES).logits.shape == (2, 3), "the model is left intact"
    model.merge_adapter()
    assert model(inputs_embeds=IMAGES).logits.shape == (2, 3), "merge_adapter keeps the new layers in use"
