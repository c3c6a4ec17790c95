"""One process of a memory measurement for :mod:`benchmarks.memory_model` (run by it, under ``torchrun``).

Builds an FPT model on a GPT-2- or Llama-shaped backbone with random weights, shards it with
:func:`fpt_peft.sharding.shard_model` when asked (the recipes' code path), and records, per process: the resident set
size (RSS) before the model exists, after it is built (and sharded), and the peak RSS of two training steps (forward,
backward, Adam); on one process, also the bytes autograd keeps for the backward (``saved_tensors_hooks``, the
activations). Writes ``<out>/rank<i>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import transformers
from peft import get_peft_model

from benchmarks.common import current_rss_bytes, saved_tensor_bytes
from fpt_peft import FPTConfig
from fpt_peft.sharding import ShardingOptions, shard_model

INPUT_DIM, CLASSES = 48, 10  # CIFAR-10's patches and classes


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (``VmHWM``) from the current RSS (Linux); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """``VmHWM`` of this process, in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def saved_bytes(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Bytes autograd keeps from one forward for the backward (parameters excluded, storages counted once)."""
    return saved_tensor_bytes(model, lambda: model(**batch).loss)


def main() -> None:
    """Measure one configuration (see the module docstring)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument("--heads", type=int, required=True)
    parser.add_argument("--family", choices=("gpt2", "llama"), default="gpt2")
    parser.add_argument("--intermediate", type=int, default=None)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--shard", action="store_true")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    gc.collect()
    rss_empty = current_rss_bytes()

    torch.manual_seed(0)
    config: transformers.PretrainedConfig
    if args.family == "gpt2":
        config = transformers.GPT2Config(
            n_layer=args.layers,
            n_embd=args.hidden,
            n_head=args.heads,
            n_inner=args.intermediate,
            vocab_size=args.vocab,
            n_positions=max(1024, args.tokens),
        )
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
    else:
        config = transformers.LlamaConfig(
            num_hidden_layers=args.layers,
            hidden_size=args.hidden,
            num_attention_heads=args.heads,
            num_key_value_heads=args.kv_heads,
            intermediate_size=args.intermediate,
            vocab_size=args.vocab,
        )
    base = transformers.AutoModel.from_config(config)
    model = get_peft_model(base, FPTConfig(input_dim=INPUT_DIM, output_dim=CLASSES))
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if args.shard:
        shard_model(model, ShardingOptions(activation_checkpointing=args.checkpointing), torch.device("cpu"))
    elif args.checkpointing:
        backbone: Any = model.get_base_model()
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(rank)
    batch = {
        "inputs_embeds": torch.randn(args.batch, args.tokens, INPUT_DIM, generator=generator),
        "labels": torch.randint(0, CLASSES, (args.batch,), generator=generator),
    }
    gc.collect()
    rss_model = current_rss_bytes()
    activations = saved_bytes(model, batch) if not args.shard and not args.checkpointing else None
    gc.collect()
    exact_peak = reset_peak_rss()
    start = current_rss_bytes()
    for _ in range(2):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    result = {
        "rank": rank,
        "processes": dist.get_world_size() if distributed else 1,
        "parameters": parameters,
        "trainable": trainable,
        "rss_empty": rss_empty,
        "rss_model": rss_model,
        "rss_step_start": start,
        "rss_step_peak": peak_rss() if exact_peak else None,
        "saved_activation_bytes": activations,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank}.json").write_text(json.dumps(result, indent=2) + "\n")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
