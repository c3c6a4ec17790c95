"""Shared fixtures: tiny randomly initialised models of several families, saved to disk like hub models."""

from __future__ import annotations

import os

# Before huggingface_hub is imported: it reads these once, at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers

transformers.logging.set_verbosity_error()

import fpt_peft  # noqa: E402,F401  (registers FPT with peft)

from .helpers import tiny_config  # noqa: E402


@pytest.fixture
def save_tiny(tmp_path: Path) -> Callable[..., Path]:
    """Save a seeded tiny model of a family and head class to a folder; returns the folder."""

    def _save(
        family: str = "gpt2", auto: type = transformers.AutoModelForSequenceClassification, **kw: object
    ) -> Path:
        config = tiny_config(family, **kw)
        torch.manual_seed(0)
        model = auto.from_config(config)
        folder = tmp_path / f"{family}-{auto.__name__}"
        model.save_pretrained(folder)
        return folder

    return _save
