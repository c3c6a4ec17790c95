"""A finished run's outputs: the adapter with its model card and labels, ``metrics.json``, and the Hub push."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from huggingface_hub import HfApi

from .adapter_save import save_adapter
from .arguments import FPTTrainingArguments
from .data.spec import TaskData
from .durable import write_text_atomically
from .model_card import adapter_card, is_hub_id
from .presets import PresetReport
from .sharding import gather_adapter_state, is_sharded


def save_outputs(
    accelerator: Accelerator,
    model: torch.nn.Module,
    output_dir: Path,
    metrics: dict[str, float],
    args: FPTTrainingArguments,
    task: TaskData,
    preset: PresetReport | None = None,
) -> None:
    """Write the final adapter with its model card, and the metrics (main process only; a sharded model's adapter is
    gathered first, by every process), both with the ``preset`` report if any; push the adapter folder to
    ``args.push_to_hub`` if given."""
    state = gather_adapter_state(model, accelerator.device) if is_sharded(model) else None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        adapter = accelerator.unwrap_model(model, keep_torch_compile=False)
        configs = getattr(adapter, "peft_config", None)  # None: a control model (``train(..., model=...)``)
        base = configs[adapter.active_adapter].base_model_name_or_path if configs else None
        card = (
            None
            if not configs
            else adapter_card(  # a control model writes the card of its own class
                task=task.spec.name,
                base_model=base or None,
                dataset=task.source if is_hub_id(task.source) and not task.local_source else None,
                metrics=metrics,
                setup=_card_setup(args, accelerator, is_sharded(model)),
                preset=preset,
                data_name=task.source if task.local_source else None,
                data_description=task.description,
            )
        )
        labels = None
        if task.label_names is not None:
            labels = {"labels.json": json.dumps({"id2label": dict(enumerate(task.label_names))}, indent=2) + "\n"}
        text = None if card is None else str(card)
        save_adapter(adapter, output_dir / "adapter", card=text, extra_files=labels, state_dict=state)
        saved = {**metrics, **preset.as_json()} if preset is not None else metrics
        write_text_atomically(output_dir / "metrics.json", json.dumps(saved, indent=2) + "\n")
        accelerator.print(f"Saved the adapter to {output_dir / 'adapter'}.")
        if args.push_to_hub:
            # upload_folder sends exactly what save_pretrained wrote, model card included (push_to_hub would
            # replace the card with transformers' generic one).
            api = HfApi()
            repo = api.create_repo(args.push_to_hub, exist_ok=True).repo_id
            api.upload_folder(repo_id=repo, folder_path=str(output_dir / "adapter"), commit_message="Upload adapter")
            accelerator.print(f"Pushed the adapter to https://huggingface.co/{repo}.")
    accelerator.wait_for_everyone()


def _card_setup(args: FPTTrainingArguments, accelerator: Accelerator, sharded: bool) -> dict[str, Any]:
    """The training options a model card reports."""
    options = args.model_options()
    trained = [g for g, key in _GROUPS.items() if options[key]]
    return {
        "model": "a local folder" if os.path.isabs(args.model) or os.path.isdir(args.model) else args.model,
        "init": args.init,
        "finetune": args.finetune,
        "trained groups": ", ".join(trained),
        "transformer blocks kept": "all" if args.num_layers is None else args.num_layers,
        "learning rate": args.learning_rate,
        "batch size (per process)": args.batch_size,
        "processes": accelerator.num_processes,
        "parallelism": "sharded (FSDP2)" if sharded else "data parallel" if accelerator.num_processes > 1 else "none",
        "steps": args.max_steps,
        "mixed precision": accelerator.mixed_precision,
        "backbone dtype": args.dtype or "as saved",
        "seed": args.seed,
    }


_GROUPS = {
    "layer norms": "train_layer_norms",
    "positions": "train_positions",
    "input layer": "train_input",
    "output layer": "train_output",
    "attention": "train_attention",
    "feed-forward": "train_feedforward",
}
