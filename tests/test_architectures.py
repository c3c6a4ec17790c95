"""Discovery finds the right groups in each family; the trainable set is exactly the configured groups."""

from __future__ import annotations

import logging

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModel, AutoModelForImageClassification, AutoModelForSequenceClassification

from fpt_peft import FPTConfig, FPTModuleLayer
from fpt_peft.pretrained import minilm_path

from .helpers import tiny_config

# family -> (expected positional-embedding target, expected norm count incl. final / embedding norms)
EXPECTED = {
    "gpt2": ("transformer.wpe", 5),
    "bert": ("bert.embeddings.position_embeddings", 5),
    "roberta": ("roberta.embeddings.position_embeddings", 5),
    "opt": ("model.decoder.embed_positions", 5),
    "gpt_neox": (None, 5),
    "llama": (None, 5),
}


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_text_families_train_exactly_norms_positions_input_and_head(family: str) -> None:
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(tiny_config(family, num_labels=4))
    model = get_peft_model(base, FPTConfig(task_type="SEQ_CLS", input_dim=6))
    position, norm_count = EXPECTED[family]
    trainable = _trainable(model)
    norms = {n for n in trainable if (".fpt_copies." in n and "norm" in n.lower()) or "ln_" in n}
    assert len({n.rsplit(".fpt_copies.", 1)[0] for n in norms}) == norm_count
    assert any(".fpt_input.default." in n for n in trainable)
    assert any(".modules_to_save.default." in n for n in trainable), "the classification head trains"
    if position is None:
        assert not any("position" in n or "wpe" in n for n in trainable)
    else:
        assert f"base_model.model.{position}.fpt_copies.default.weight" in trainable
    frozen_kinds = ("attn", "attention", "mlp", "intermediate", "fc1", "fc2", "dense")
    for name in trainable:
        if any(k in name for k in frozen_kinds) and "modules_to_save" not in name:
            assert "norm" in name.lower(), f"{name} should be frozen"
    out = model(inputs_embeds=torch.randn(2, 5, 6), labels=torch.tensor([0, 3]))
    out.loss.backward()
    assert out.logits.shape == (2, 4)


def test_llama_has_no_positions_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    base = AutoModel.from_config(tiny_config("llama"))
    with caplog.at_level(logging.WARNING, logger="fpt_peft"):
        model = get_peft_model(base, FPTConfig(input_vocab_size=11, output_dim=3))
    assert "no learned positional embeddings" in caplog.text
    config = model.peft_config["default"]
    assert config.position_parameters == []
    assert all("norm" in t for t in config.target_modules)
    out = model(input_ids=torch.randint(0, 11, (2, 7)), labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)


def test_vit_position_parameter_inside_embeddings_is_trained() -> None:
    torch.manual_seed(0)
    base = AutoModelForImageClassification.from_config(tiny_config("vit", num_labels=5))
    original = base.vit.embeddings.position_embeddings.detach().clone()
    model = get_peft_model(base, FPTConfig(task_type="SEQ_CLS"))
    assert model.peft_config["default"].position_parameters == ["vit.embeddings.position_embeddings"]
    trainable = _trainable(model)
    assert "base_model.model.vit.embeddings.fpt_parameters.default" in trainable
    assert "base_model.model.classifier.modules_to_save.default.weight" in trainable
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    pixels = torch.randn(2, 3, 16, 16)
    for _ in range(2):
        model(pixel_values=pixels, labels=torch.tensor([1, 4])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    embeddings = model.base_model.model.vit.embeddings
    assert torch.equal(embeddings.base_layer.position_embeddings, original), "the base parameter stays frozen"
    assert not torch.equal(embeddings.fpt_parameters["default"], original), "the adapter copy trained"
    with model.disable_adapter():
        disabled = model(pixel_values=pixels).logits
    assert not torch.equal(disabled, model(pixel_values=pixels).logits)


def test_real_pretrained_minilm_backbone_with_fpt_head() -> None:
    base = AutoModel.from_pretrained(minilm_path())
    assert base.config.hidden_size == 384 and base.config.model_type == "bert"
    word_embeddings = base.embeddings.word_embeddings.weight.detach().clone()
    model = get_peft_model(base, FPTConfig(input_dim=10, output_dim=2, output_tokens=2, values_per_token=5))
    wrapped = [n for n, m in model.base_model.model.named_modules() if isinstance(m, FPTModuleLayer)]
    assert "embeddings.position_embeddings" in wrapped
    assert sum(n.endswith("LayerNorm") for n in wrapped) == 13  # embeddings + 2 per block x 6
    out = model(inputs_embeds=torch.randn(3, 4, 10), labels=torch.randint(0, 2, (3, 10)))
    assert out.logits.shape == (3, 10, 2)
    out.loss.backward()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base_params = sum(p.numel() for n, p in model.named_parameters() if "fpt_" not in n)
    assert trainable < 0.015 * base_params
    assert torch.equal(model.base_model.model.embeddings.word_embeddings.base_layer.weight, word_embeddings)


def test_nothing_to_train_names_what_was_searched() -> None:
    class Bare(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    with pytest.raises(ValueError, match=r"found nothing to train.*norm modules.*target_modules"):
        get_peft_model(Bare(), FPTConfig())


def test_target_modules_override_discovery() -> None:
    base = AutoModelForSequenceClassification.from_config(tiny_config("gpt2", num_labels=2))
    model = get_peft_model(base, FPTConfig(task_type="SEQ_CLS", target_modules=["ln_f"]))
    wrapped = {n.split(".fpt_copies")[0] for n in _trainable(model) if ".fpt_copies." in n}
    assert wrapped == {"base_model.model.transformer.ln_f"}


def test_ablation_switches_select_groups() -> None:
    base = AutoModelForSequenceClassification.from_config(tiny_config("gpt2", num_labels=2))
    model = get_peft_model(
        base,
        FPTConfig(
            task_type="SEQ_CLS",
            input_dim=3,
            train_layer_norms=False,
            train_positions=False,
            train_attention=True,
        ),
    )
    wrapped = {
        n.split(".fpt_copies")[0].removeprefix("base_model.model.") for n in _trainable(model) if "fpt_copies" in n
    }
    assert wrapped == {f"transformer.h.{i}.attn.{p}" for i in range(2) for p in ("c_attn", "c_proj")}
    model = get_peft_model(
        AutoModelForSequenceClassification.from_config(tiny_config("gpt2", num_labels=2)),
        FPTConfig(
            task_type="SEQ_CLS",
            input_dim=3,
            train_layer_norms=False,
            train_positions=False,
            train_feedforward=True,
        ),
    )
    wrapped = {
        n.split(".fpt_copies")[0].removeprefix("base_model.model.") for n in _trainable(model) if "fpt_copies" in n
    }
    assert wrapped == {f"transformer.h.{i}.mlp.{p}" for i in range(2) for p in ("c_fc", "c_proj")}
