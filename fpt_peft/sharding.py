"""Sharded training of an FPT model (PyTorch FSDP2, ``fully_shard``): the frozen base split across processes.

Asked for by Accelerate's FSDP config (``accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml``,
which sets ``ACCELERATE_USE_FSDP`` and ``FSDP_*`` in every process) and read through Accelerate's own
:class:`~accelerate.utils.FullyShardedDataParallelPlugin`. The training loop applies ``fully_shard`` itself, on the
process group Accelerate set up, one unit per transformer block plus the root, so that the code that shards, trains,
checkpoints and gathers the adapter is the same on CPU (gloo) and GPU (NCCL): Accelerate's own FSDP preparation does
not engage on CPU (``Accelerator(cpu=True)`` makes the run data-parallel), so it is not used for the model.

Each FSDP unit may mix frozen and trainable parameters (FPT's copies of the layer norms sit inside each block);
only the trainable ones reach the optimizer, so only they get Adam state. Checkpoints hold the adapter's shards and
the optimizer's, written by every process with ``torch.distributed.checkpoint`` (:func:`save_sharded_state`); the
final adapter is gathered (:func:`gather_adapter_state`) and written once, as the file a one-process run writes.

Parts only a GPU exercises: NCCL, bf16 mixed precision (``MixedPrecisionPolicy``) and CPU offload of the shards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from .blocks import block_list
from .checkpoints import is_adapter_key

Model = TypeVar("Model", bound=torch.nn.Module)
SHARDED_STATE_DIR = "sharded"  # the folder in a checkpoint that holds the sharded adapter and optimizer state


@dataclass(frozen=True)
class ShardingOptions:
    """How to shard: Accelerate's FSDP settings that apply to FPT.

    ``reshard_after_forward``: free each block's gathered weights after its forward (less memory, one more
    all-gather in the backward). ``offload``: keep the shards in CPU memory (GPU only). ``activation_checkpointing``:
    recompute each block's activations in the backward instead of keeping them.
    """

    reshard_after_forward: bool = True
    offload: bool = False
    activation_checkpointing: bool = False


def requested_sharding() -> ShardingOptions | None:
    """The sharding the launcher asked for (``accelerate launch`` with an FSDP config), or None."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    version = os.environ.get("FSDP_VERSION", "1")  # Accelerate's default; its FSDP1 plugin fails on CPU itself
    if version != "2":
        raise ValueError(
            f"The accelerate config asks for FSDP version {version}; fpt-peft shards with FSDP2 (fully_shard). Set "
            "fsdp_version: 2 in its fsdp_config (see recipes/accelerate_configs/fsdp.yaml)."
        )
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables the launcher set
    return ShardingOptions(
        reshard_after_forward=bool(plugin.reshard_after_forward),
        offload=isinstance(plugin.cpu_offload, CPUOffloadPolicy),  # FSDP2: accelerate's plugin holds torch's policy
        activation_checkpointing=bool(plugin.activation_checkpointing),
    )


def shard_model(model: Model, options: ShardingOptions, device: torch.device, mixed_precision: str = "no") -> Model:
    """Apply ``fully_shard`` to each transformer block of ``model`` (a PeftModel) and to ``model`` itself, on the
    default process group; the parameters are moved to ``device`` one unit at a time (a GPU never holds the whole
    base). Returns ``model``, now an ``FSDPModule``; build the optimizer after this call.
    """
    if mixed_precision == "fp16":
        raise ValueError(
            "--mixed-precision fp16 is not supported with sharded (FSDP) training: it needs a sharded gradient "
            "scaler. Use bf16 (or no)."
        )
    if options.offload and device.type != "cuda":
        raise ValueError(
            "fsdp_offload_params: true needs GPUs (it keeps the shards in CPU memory); this run is on CPU."
        )
    dtype = torch.bfloat16 if mixed_precision == "bf16" else None
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype is not None else None)
    offload = CPUOffloadPolicy() if options.offload else OffloadPolicy()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    base = model.get_base_model()  # type: ignore[operator]
    if options.activation_checkpointing:
        # transformers' own gradient checkpointing keeps parameter names (a wrapper module would rename them).
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    _, blocks = block_list(base)
    for block in blocks:
        fully_shard(
            block, reshard_after_forward=options.reshard_after_forward, mp_policy=policy, offload_policy=offload
        )
    # The root unit holds the rest (input and output layers, positions, final norm). fully_shard moves each unit's
    # parameters and buffers to the mesh's device itself (with offload, the shards then live in CPU memory).
    fully_shard(model, reshard_after_forward=options.reshard_after_forward, mp_policy=policy, offload_policy=offload)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` was sharded by :func:`shard_model`."""
    return isinstance(model, FSDPModule)


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of ``tensor`` (its shard if it is a ``DTensor``)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of ``tensor`` on every process (gathered if it is a ``DTensor``; every process must call this)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _adapter_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict[str, object]]:
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {
        "model": {k: v for k, v in model_state.items() if is_adapter_key(k)},  # shards; the frozen base is not saved
        "optimizer": optimizer_state,  # type: ignore[dict-item]
    }


def save_sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: str | Path) -> None:
    """Write this process's shards of the adapter weights and their Adam state into ``folder`` (every process calls
    this; ``torch.distributed.checkpoint`` format, one file per process plus ``.metadata``)."""
    dcp.save(_adapter_state(model, optimizer), checkpoint_id=str(folder))


def load_sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: str | Path) -> None:
    """Restore what :func:`save_sharded_state` wrote into ``model`` and ``optimizer`` (every process calls this)."""
    state = _adapter_state(model, optimizer)
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],  # type: ignore[arg-type]
        optim_state_dict=state["optimizer"],  # type: ignore[arg-type]
        options=StateDictOptions(strict=False),  # the frozen base is not in a checkpoint
    )


def gather_adapter_state(model: torch.nn.Module, device: torch.device) -> dict[str, torch.Tensor]:
    """The adapter's weights, whole, on the CPU of every process (each shard is gathered in turn; the frozen base is
    never gathered). Every process must call this; pass the result to ``save_pretrained(state_dict=...)``."""
    gathered = {}
    for key, value in model.state_dict().items():
        if not is_adapter_key(key):
            continue
        if isinstance(value, DTensor) and value.device.type != device.type:  # offloaded shards
            value = value.to(device)
        gathered[key] = full_value(value).detach().cpu()
    return gathered
