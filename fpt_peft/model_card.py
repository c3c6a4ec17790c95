"""The model card (``README.md``) of an adapter a recipe trained, in the Hub's conventions.

YAML metadata (``library_name``, ``base_model``, ``tags``, ``datasets``, ``metrics`` and a ``model-index`` with the
final evaluation), then what the adapter does, the command that made it, the training set-up, the results and how to
load it. Written with ``huggingface_hub``'s ``ModelCard``, so the Hub parses it as it parses its own.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .adapter_files import LOADING_NOTE
from .presets import PresetReport

_METRIC_NAMES = {"accuracy": "Accuracy", "per_bit_accuracy": "Per-bit accuracy"}


def portable_command(argv: Sequence[str]) -> str:
    """The command line ``argv`` as a user would type it, without the paths of this machine.

    The script keeps its path from ``recipes/``; other absolute paths become ``PATH``.
    """
    script, *args = argv or ["recipe"]
    parts = script.replace(os.sep, "/").split("/")
    script = "/".join(parts[parts.index("recipes") :]) if "recipes" in parts else parts[-1]
    shown = ["PATH" if os.path.isabs(arg) else arg for arg in args]
    return shlex.join(["accelerate", "launch", script, *shown])


def adapter_card(
    *,
    task: str,
    base_model: str | None,
    dataset: str | None,
    metrics: Mapping[str, float],
    setup: Mapping[str, Any],
    command: str | None = None,
    preset: PresetReport | None = None,
    data_name: str | None = None,
    data_description: str | None = None,
) -> ModelCard:
    """The card of an adapter trained on ``task`` on ``base_model`` (a Hub id, or None for random weights).

    ``dataset`` is the Hub dataset id (None for generated or local data), ``metrics`` the final evaluation,
    ``setup`` the training options worth reporting, ``command`` the command that trained it (default: this process's),
    ``preset`` the recipe's ``--preset`` and where the set-up differs from the paper's (none: not reported).
    ``data_name`` names local data (a file or folder name, never a path; the card then calls it neither a Hub dataset
    nor generated) and ``data_description`` says what the data is (kind, shapes, classes, tokens), in a "Data" section.
    """
    scores = {k: float(v) for k, v in metrics.items() if k in _METRIC_NAMES}
    name = f"fpt-{task.replace('_', '-')}"
    data = ModelCardData(
        library_name="peft",
        base_model=base_model,
        datasets=[dataset] if dataset else None,
        metrics=sorted(scores) or None,
        tags=["fpt", "fpt-peft", "frozen-pretrained-transformer", "peft", task],
        model_name=name,
        eval_results=[
            EvalResult(
                task_type="classification",
                task_name=task,
                dataset_type=dataset or task,
                dataset_name=dataset or (f"{data_name} (local)" if data_name else f"{task} (generated)"),
                metric_type=metric,
                metric_name=_METRIC_NAMES[metric],
                metric_value=round(value, 4),
            )
            for metric, value in sorted(scores.items())
        ]
        or None,
    )
    if base_model:
        base = f"`{base_model}`"
    elif setup.get("init") == "shuffled":
        base = "a pretrained transformer whose weights were shuffled within each tensor (a control)"
    else:
        base = "a transformer with random weights (the paper's baseline)"
    results = "\n".join(f"| {_METRIC_NAMES[m]} | {v:.4f} |" for m, v in sorted(scores.items()))
    if preset is not None:
        setup = {"preset": preset.preset, **setup}
    options = "\n".join(f"| `{k}` | `{v}` |" for k, v in setup.items())
    body = f"""
# {name}

A [Frozen Pretrained Transformer](https://arxiv.org/abs/2103.05247) adapter for the task `{task}` on {base}: the
self-attention and feed-forward weights stay frozen; the layer norms, the positional embeddings and a new input and
output layer were trained (as the set-up below says), with fpt-peft, which makes FPT a PEFT method.

## Training

```bash
{command or portable_command(sys.argv)}
```

| option | value |
|---|---|
{options}
{_against_paper(preset)}{_data(data_description)}
## Results

Evaluation at the end of training{f" on `{dataset or data_name}`" if dataset or data_name else ""}:

| metric | value |
|---|---|
{results}

{_loading(base_model)}{LOADING_NOTE}
Install fpt-peft from its source repository (`pip install .` in a checkout) until it is published on PyPI.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _against_paper(preset: PresetReport | None) -> str:
    if preset is None:
        return ""
    if not preset.paper_task:
        return f"\nPreset `{preset.preset}`; this task is not one of the paper's: no paper set-up to compare.\n"
    if not preset.differences:
        return f"\nPreset `{preset.preset}`: the set-up of the paper (Lu et al., 2021) and its official code.\n"
    items = "\n".join(f"- {d}" for d in preset.differences)
    return f"\nPreset `{preset.preset}`; the set-up differs from the paper's (Lu et al., 2021) in:\n\n{items}\n"


def _data(description: str | None) -> str:
    return f"\n## Data\n\n{description}\n" if description else ""


def _loading(base_model: str | None) -> str:
    if not base_model:
        return ""
    return f"""## Usage

```python
import fpt_peft  # registers the FPT method with peft
from peft import PeftModel
from transformers import AutoModel

base = AutoModel.from_pretrained("{base_model}")
model = PeftModel.from_pretrained(base, "<this repo or folder>")
```

"""


def is_hub_id(source: str | None) -> bool:
    """Whether ``source`` names a Hub repository rather than a local folder."""
    return bool(source) and not os.path.exists(str(source)) and not os.path.isabs(str(source))
