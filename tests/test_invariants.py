"""Training invariants: frozen weights stay bit-identical; Trainer, bf16 and gradient checkpointing work."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch
from peft import get_peft_model
from transformers import AutoModel, AutoModelForSequenceClassification, Trainer, TrainingArguments

from fpt_peft import FPTConfig

from .helpers import base_state, tiny_config


def _steps(model: torch.nn.Module, batches: int = 3, **inputs: torch.Tensor) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(batches):
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama"])
def test_frozen_weights_bit_identical_and_every_adapter_weight_moves(family: str) -> None:
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(tiny_config(family, num_labels=3))
    before = base_state(base)
    model = get_peft_model(base, FPTConfig(task_type="SEQ_CLS", input_dim=5))
    adapter_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    _steps(model, inputs_embeds=torch.randn(4, 6, 5), labels=torch.tensor([0, 1, 2, 0]))
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    base_params = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p for n, p in frozen.items()}
    compared = 0
    for name, tensor in before.items():
        if name in base_params:
            assert torch.equal(base_params[name], tensor), f"{name} changed"
            compared += 1
    assert compared >= len([n for n in before if "score" not in n and "classifier" not in n]) - 2
    for name, tensor in adapter_before.items():
        assert not torch.equal(dict(model.named_parameters())[name], tensor), f"{name} did not train"


def test_trainable_share_of_real_gpt2_shape() -> None:
    # The paper's base (GPT-2 small): count on the real shape without loading weights.
    config = tiny_config("gpt2", n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257, num_labels=10)
    with torch.device("meta"):
        base = AutoModelForSequenceClassification.from_config(config)
        model = get_peft_model(base, FPTConfig(task_type="SEQ_CLS", input_dim=48))
    trainable, _total = model.get_nb_trainable_parameters()
    # ln: 25 norms x 2 x 768; wpe 1024 x 768; input 48 x 768 + 768; head 768 x 10
    expected = 25 * 2 * 768 + 1024 * 768 + 48 * 768 + 768 + 768 * 10
    assert trainable == expected
    assert trainable / 124_439_808 < 0.0075  # under 0.75% of GPT-2 small's 124M weights


def test_transformers_trainer_trains_and_leaves_base_frozen(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = AutoModel.from_config(tiny_config("bert"))
    before = base_state(base)
    model = get_peft_model(base, FPTConfig(input_dim=4, output_dim=2))
    features = torch.randn(64, 3, 4)
    labels = (features[:, :, 0].sum(1) > 0).long()
    data = datasets.Dataset.from_dict({"inputs_embeds": features.numpy(), "labels": labels.numpy()})
    data = data.with_format("torch")
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=16,
        num_train_epochs=3,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
        label_names=["labels"],  # PeftModel.forward takes **kwargs: tell Trainer which column holds the labels
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    result = trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert result.global_step == 12 and losses[-1] < losses[0]
    state = model.get_base_model().state_dict()
    assert torch.equal(
        state["encoder.layer.0.attention.self.query.weight"],
        before["encoder.layer.0.attention.self.query.weight"],
    )


def test_bf16_autocast_and_bf16_weights() -> None:
    torch.manual_seed(0)
    model = get_peft_model(AutoModel.from_config(tiny_config("gpt2")), FPTConfig(input_dim=4, output_dim=3))
    inputs = {"inputs_embeds": torch.randn(2, 5, 4), "labels": torch.tensor([0, 2])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    out.loss.backward()
    bf16 = get_peft_model(
        AutoModel.from_config(tiny_config("gpt2"), dtype=torch.bfloat16), FPTConfig(input_dim=4, output_dim=3)
    )
    # PEFT's autocast_adapter_dtype rule: every adapter weight in float32, the base in bfloat16.
    for name, param in bf16.named_parameters():
        assert param.dtype == (torch.float32 if "fpt_" in name else torch.bfloat16), name
    out = bf16(**inputs)
    out.loss.backward()
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing(reentrant: bool) -> None:
    torch.manual_seed(0)
    base = AutoModel.from_config(tiny_config("gpt2", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    model = get_peft_model(base, FPTConfig(input_dim=4, output_dim=3))
    inputs = {"inputs_embeds": torch.randn(2, 5, 4), "labels": torch.tensor([0, 2])}
    model.train()
    reference = model(**inputs).loss
    reference.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    loss = model(**inputs).loss
    loss.backward()
    assert model.get_base_model().is_gradient_checkpointing
    for name, grad in grads.items():
        got = dict(model.named_parameters())[name].grad
        assert got is not None, name
        torch.testing.assert_close(got, grad, rtol=1e-4, atol=1e-5)
