"""The recipes' command lines stand without the machine-learning stack: ``--help`` loads no torch, peft or
transformers (its speed is measured by ``benchmarks/cli_startup.py``, not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .training_utils import RECIPES, ROOT, offline_env

HEAVY = ("torch", "peft", "transformers", "accelerate", "datasets", "huggingface_hub", "numpy")
PROBE = """
import json, runpy, sys
sys.argv = [{path!r}, "--help"]
try:
    runpy.run_path({path!r}, run_name="__main__")
except SystemExit as exit:
    print(json.dumps({{"code": exit.code, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES.glob("*.py")))
def test_recipe_help_loads_no_machine_learning_library(recipe: str) -> None:
    code = PROBE.format(path=str(RECIPES / f"{recipe}.py"), heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=offline_env())
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith(f"usage: {recipe}.py") and "--max-steps" in done.stdout
    assert json.loads(lines[-1]) == {"code": 0, "heavy": []}
