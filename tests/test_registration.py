"""FPT is a peft method after ``import fpt_peft``; the registration is idempotent and survives a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from peft import PeftConfig, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from transformers import AutoModelForSequenceClassification

import fpt_peft
from fpt_peft import FPTConfig, FPTModel

ROOT = Path(__file__).resolve().parents[1]


def test_import_registers_in_all_three_tables_idempotently() -> None:
    sizes = [len(t) for t in (PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING)]
    fpt_peft.register()
    fpt_peft.register()
    assert [
        len(t) for t in (PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING)
    ] == sizes
    assert PEFT_TYPE_TO_CONFIG_MAPPING["FPT"] is FPTConfig  # type: ignore[index]
    assert PEFT_TYPE_TO_TUNER_MAPPING["FPT"] is FPTModel  # type: ignore[index]
    assert PEFT_TYPE_TO_PREFIX_MAPPING["FPT"] == "fpt_"  # type: ignore[index]


def test_saved_config_says_fpt_and_loads_through_peft(save_tiny, tmp_path: Path) -> None:
    base = AutoModelForSequenceClassification.from_pretrained(save_tiny("gpt2", num_labels=3))
    model = get_peft_model(base, FPTConfig(task_type="SEQ_CLS", input_dim=6))
    model.save_pretrained(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "FPT"
    assert saved["input_dim"] == 6 and saved["base_hidden_size"] == 32 and saved["base_model_type"] == "gpt2"
    assert saved["target_modules"], "the resolved targets are saved so that a load is exact"
    loaded = PeftConfig.from_pretrained(str(tmp_path / "a"))
    assert isinstance(loaded, FPTConfig) and loaded.input_dim == 6


def test_fresh_process_without_import_fails_and_model_card_says_what_to_do(save_tiny, tmp_path: Path) -> None:
    base_dir = save_tiny("gpt2", num_labels=3)
    base = AutoModelForSequenceClassification.from_pretrained(base_dir)
    get_peft_model(base, FPTConfig(task_type="SEQ_CLS", input_dim=6)).save_pretrained(tmp_path / "a")
    card = (tmp_path / "a" / "README.md").read_text()
    assert "import fpt_peft" in card and "library_name: peft" in card
    code = (
        "import peft, transformers\n"
        f"base = transformers.AutoModelForSequenceClassification.from_pretrained({str(base_dir)!r})\n"
        f"peft.PeftModel.from_pretrained(base, {str(tmp_path / 'a')!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "FPT" in result.stderr
    with_import = subprocess.run(
        [sys.executable, "-c", "import fpt_peft\n" + code], capture_output=True, text=True, timeout=120
    )
    assert with_import.returncode == 0, with_import.stderr


# Each order in which a program can meet fpt_peft and peft: FPT is registered as soon as peft is there.
IMPORT_ORDERS = {
    "fpt_peft, then peft": "import fpt_peft\nimport peft",
    "peft, then fpt_peft": "import peft\nimport fpt_peft",
    "fpt_peft, then a submodule of peft": "import fpt_peft\nfrom peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING",
    "the tuner's config module first": "from fpt_peft.tuner.config import FPTConfig\nimport fpt_peft",
    "a class of fpt_peft first": "from fpt_peft import FPTConfig\nimport fpt_peft",
    "transformers probing for peft first": (
        "import fpt_peft\nfrom transformers.utils import is_peft_available\nassert is_peft_available()\nimport peft"
    ),
}


@pytest.mark.parametrize("order", list(IMPORT_ORDERS))
def test_fpt_is_registered_whatever_the_import_order(order: str) -> None:
    code = IMPORT_ORDERS[order] + (
        "\nfrom peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as m\nimport fpt_peft.tuner.config as c"
        "\nprint(m.get('FPT') is c.FPTConfig)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]


def test_import_fpt_peft_alone_loads_no_machine_learning_library() -> None:
    code = (
        "import sys, fpt_peft, fpt_peft.arguments\n"
        "print([m for m in ('torch', 'peft', 'transformers', 'accelerate', 'datasets') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
