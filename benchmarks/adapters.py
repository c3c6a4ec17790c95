"""FPT adapters on disk and in memory: size against the base model, and the time to switch, load or reload.

For each model, two FPT adapters (CIFAR-10-shaped: 48-wide patches -> 10 classes; MNIST-shaped: 16 -> 10) are
made and saved. Measured:

- size: ``adapter_model.safetensors`` bytes against the base model's safetensors bytes;
- ``set_adapter``: switching between the two adapters loaded on one base (median of ``--switches``);
- ``load_adapter``: loading an adapter from disk onto the loaded base (median of ``--loads``; each loaded copy is
  deleted again before the next);
- reloading the base model with ``AutoModel.from_pretrained`` (median of ``--reloads``), alone and followed by
  ``PeftModel.from_pretrained`` with one adapter (what a process without switching would do);
- serving 4 adapters at once (median of ``--mixed``): one forward of a mixed batch (16 rows x 64 tokens, 4 rows per
  adapter, ``adapter_names=[...]``) against ``set_adapter`` and a forward per adapter's sub-batch, in one run.

    python -m benchmarks.adapters
    python -m benchmarks.adapters --models minilm
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModel

from benchmarks.common import (
    MODELS,
    RESULTS_DIR,
    bar_plot,
    base_folder,
    environment,
    folder_bytes,
    format_table,
    load_base,
    median,
    mib,
    scratch_dir,
    set_threads,
    time_calls,
    write_json,
)
from fpt_peft import FPTConfig

ADAPTERS = {"cifar10": FPTConfig(input_dim=48, output_dim=10), "mnist": FPTConfig(input_dim=16, output_dim=10)}


def save_adapters(model_name: str, scratch: Path) -> dict[str, Path]:
    """Make the two FPT adapters on ``model_name`` and save each; returns their folders."""
    folders = {}
    for name, config in ADAPTERS.items():
        torch.manual_seed(0)
        model = get_peft_model(load_base(model_name), FPTConfig(**config.to_dict()))
        folders[name] = scratch / f"{model_name}-{name}"
        model.save_pretrained(str(folders[name]))
    return folders


def measure_model(model_name: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Sizes and switch / load / reload times for one base model."""
    base_dir = base_folder(model_name, scratch)
    adapters = save_adapters(model_name, scratch)
    reload_s = time_calls(lambda: AutoModel.from_pretrained(base_dir), args.reloads)
    reload_with_adapter_s = time_calls(
        lambda: PeftModel.from_pretrained(AutoModel.from_pretrained(base_dir), adapters["mnist"]), args.reloads
    )
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(base_dir), adapters["cifar10"], adapter_name="cifar10")
    model.load_adapter(adapters["mnist"], adapter_name="mnist")
    names = list(ADAPTERS)
    model.set_adapter(names[0])
    switch_s: list[float] = []
    for i in range(args.switches):
        switch_s += time_calls(partial(model.set_adapter, names[(i + 1) % 2]), 1)
    load_s: list[float] = []
    for i in range(args.loads):
        load_s += time_calls(partial(model.load_adapter, str(adapters["cifar10"]), adapter_name=f"copy{i}"), 1)
        model.delete_adapter(f"copy{i}")
    mixed_s, switching_s = time_mixed_batch(model, adapters["cifar10"], args.mixed)
    adapter_bytes = {name: (folder / "adapter_model.safetensors").stat().st_size for name, folder in adapters.items()}
    base_bytes = folder_bytes(base_dir)
    trainable = {
        name: sum(p.numel() for n, p in model.named_parameters() if f".{name}." in n or n.endswith(f".{name}"))
        for name in ADAPTERS
    }
    return {
        "base_bytes": base_bytes,
        "base_parameters": sum(p.numel() for p in model.get_base_model().parameters()) - sum(trainable.values()),
        "adapter_bytes": adapter_bytes,
        "adapter_parameters": trainable,
        "base_to_adapter_size_ratio": base_bytes / max(adapter_bytes.values()),
        "set_adapter_us": median(switch_s) * 1e6,
        "load_adapter_ms": median(load_s) * 1e3,
        "reload_base_ms": median(reload_s) * 1e3,
        "reload_base_with_adapter_ms": median(reload_with_adapter_s) * 1e3,
        "mixed_batch_4_adapters_ms": median(mixed_s) * 1e3,
        "switching_sub_batches_4_adapters_ms": median(switching_s) * 1e3,
        "set_adapter_us_all": [t * 1e6 for t in switch_s],
        "load_adapter_ms_all": [t * 1e3 for t in load_s],
        "reload_base_ms_all": [t * 1e3 for t in reload_s],
        "reload_base_with_adapter_ms_all": [t * 1e3 for t in reload_with_adapter_s],
    }


def time_mixed_batch(model: PeftModel, folder: Path, repeats: int) -> tuple[list[float], list[float]]:
    """Times of one mixed-adapter forward and of the per-adapter forwards it replaces (4 copies of one adapter
    shape, 4 rows each), in inference mode."""
    names = [f"serve{i}" for i in range(4)]
    for name in names:
        model.load_adapter(str(folder), adapter_name=name)
    model.eval()
    inputs = torch.randn(16, 64, 48, generator=torch.Generator().manual_seed(0))
    rows = [names[i % 4] for i in range(16)]

    def switching() -> None:
        for name in names:
            model.set_adapter(name)
            model(inputs_embeds=inputs[[i for i, n in enumerate(rows) if n == name]])

    with torch.inference_mode():
        mixed = time_calls(partial(model, inputs_embeds=inputs, adapter_names=rows), repeats)
        switched = time_calls(switching, repeats)
    for name in names:
        model.delete_adapter(name)
    return mixed, switched


def report(args: argparse.Namespace, models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Print the table, write the JSON and the plot."""
    headers = [
        "model",
        "base MiB",
        "adapter KiB (cifar10 / mnist)",
        "base / adapter",
        "set_adapter us",
        "load_adapter ms",
        "reload base ms",
        "reload base + adapter ms",
        "4 adapters: mixed batch / switching ms",
    ]
    rows = [
        [
            name,
            mib(m["base_bytes"]),
            " / ".join(f"{b / 1024:.0f}" for b in m["adapter_bytes"].values()),
            f"{m['base_to_adapter_size_ratio']:.0f}x",
            m["set_adapter_us"],
            m["load_adapter_ms"],
            m["reload_base_ms"],
            m["reload_base_with_adapter_ms"],
            f"{m['mixed_batch_4_adapters_ms']:.1f} / {m['switching_sub_batches_4_adapters_ms']:.1f}",
        ]
        for name, m in models.items()
    ]
    data = {
        "benchmark": "adapters",
        "command": "python -m benchmarks.adapters " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "settings": {k: getattr(args, k) for k in ("models", "threads", "switches", "loads", "reloads", "mixed")},
        "environment": environment("cpu"),
        "adapters": {name: config.to_dict() for name, config in ADAPTERS.items()},
        "models": models,
    }
    name = args.name or "adapters"
    json_path = write_json(name, data, args.out_dir)
    sizes = {
        model: {"base": m["base_bytes"] / 1024, **{f"adapter {a}": b / 1024 for a, b in m["adapter_bytes"].items()}}
        for model, m in models.items()
    }
    times = {
        model: {
            "set_adapter": m["set_adapter_us"] / 1e3,
            "load_adapter": m["load_adapter_ms"],
            "reload base": m["reload_base_ms"],
            "reload base + adapter": m["reload_base_with_adapter_ms"],
        }
        for model, m in models.items()
    }
    png_path = bar_plot(
        name, [("KiB on disk", sizes), ("ms (median)", times)], out_dir=args.out_dir, log_panels=(0, 1)
    )
    print(format_table(headers, rows))
    print(f"wrote {json_path} and {png_path}")
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["minilm", "gpt2-shape"])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1; 0: all)")
    parser.add_argument("--switches", type=int, default=200, help="set_adapter calls timed")
    parser.add_argument("--loads", type=int, default=10, help="load_adapter calls timed")
    parser.add_argument("--reloads", type=int, default=3, help="base model reloads timed")
    parser.add_argument("--mixed", type=int, default=20, help="mixed-batch and switching forwards timed")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (MiniLM only)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default=None, help="result file name (default adapters)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.switches, args.loads, args.reloads, args.mixed = ["minilm"], 10, 2, 1, 2
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the measurements and report."""
    args = parse_args(argv)
    set_threads(args.threads)
    with scratch_dir() as scratch:
        models = {name: measure_model(name, args, Path(scratch)) for name in args.models}
    return report(args, models)


if __name__ == "__main__":
    main()
