"""Tiny randomly initialised model configurations of several families, for fast tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import transformers


def _decoder(config_class: Any, **extra: object) -> transformers.PretrainedConfig:
    """A tiny config of a Llama-like decoder family (grouped-query attention, rotary positions)."""
    return config_class(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        vocab_size=50,
        pad_token_id=0,
        **extra,
    )


TINY = {
    "gpt2": lambda: transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=50, bos_token_id=0, eos_token_id=0
    ),
    "bert": lambda: transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        vocab_size=50,
    ),
    "roberta": lambda: transformers.RobertaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=66,
        vocab_size=50,
        pad_token_id=1,
    ),
    "opt": lambda: transformers.OPTConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        ffn_dim=64,
        max_position_embeddings=64,
        vocab_size=50,
        word_embed_proj_dim=32,
        pad_token_id=1,
    ),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        vocab_size=50,
    ),
    "llama": lambda: _decoder(transformers.LlamaConfig),
    "qwen2": lambda: _decoder(transformers.Qwen2Config),
    "mistral": lambda: _decoder(transformers.MistralConfig),
    "phi3": lambda: _decoder(transformers.Phi3Config, bos_token_id=1, eos_token_id=2),
    "t5": lambda: transformers.T5Config(
        num_layers=2,
        num_decoder_layers=2,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        vocab_size=50,
        decoder_start_token_id=0,
    ),
    "bart": lambda: transformers.BartConfig(
        encoder_layers=2,
        decoder_layers=2,
        d_model=32,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        vocab_size=50,
    ),
    "vit": lambda: transformers.ViTConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_channels=3,
    ),
}


def tiny_config(family: str, **overrides: object) -> transformers.PretrainedConfig:
    """A tiny configuration of ``family`` (a key of ``TINY``)."""
    config = TINY[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def perturb_adapter(model: torch.nn.Module, seed: int = 1) -> None:
    """Move every adapter weight away from its initial value (FPT's copies start equal to the base)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "fpt_" in name or "modules_to_save" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator).to(param.dtype))


def base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every tensor of a model (for bit-identity checks)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


ROOT = Path(__file__).resolve().parents[1]


def run_benchmark_quick(module: str, out_dir: Path, name: str, *extra: str) -> dict[str, Any]:
    """Run ``python -m benchmarks.<module> --quick [extra...]`` and return its JSON, checking the files it must
    write."""
    command = [
        sys.executable,
        "-m",
        f"benchmarks.{module}",
        "--quick",
        f"--out-dir={out_dir}",
        f"--name={name}",
        *extra,
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-4000:]}"
    assert (out_dir / f"{name}.png").stat().st_size > 1000
    data: dict[str, Any] = json.loads((out_dir / f"{name}.json").read_text())
    assert data["benchmark"] == module and data["quick"] is True
    assert {"torch", "transformers", "peft", "fpt_peft", "device"} <= set(data["environment"])
    return data


def child_processes(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux's /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
