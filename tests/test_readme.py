"""The README's quickstart runs as written (offline, on the packaged MiniLM)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_block_runs_and_saves_a_small_adapter(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    quickstart = blocks[0]
    assert "get_peft_model" in quickstart and "save_pretrained" in quickstart
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", quickstart], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trainable params" in result.stdout
    adapter = tmp_path / "out" / "cifar" / "adapter_model.safetensors"
    assert 0.5e6 < adapter.stat().st_size < 2e6


def _python_blocks() -> list[tuple[str, str | None]]:
    """Every python block of the README in order, with the reason it cannot run here (or None)."""
    blocks = []
    for match in re.finditer(r"(<!-- needs-hub -->\n)?```python\n(.*?)```", README.read_text(), flags=re.S):
        blocks.append((match.group(2), "needs the Hugging Face Hub" if match.group(1) else None))
    return blocks


def test_every_python_block_runs_in_order_in_one_fresh_process(tmp_path: Path) -> None:
    blocks = _python_blocks()
    runnable = [code for code, reason in blocks if reason is None]
    skipped = [code for code, reason in blocks if reason is not None]
    assert len(runnable) >= 4 and all("HfApi" in code or "me/" in code for code in skipped)
    program = "\n".join(f"{code}\nprint('README block {i} done', flush=True)" for i, code in enumerate(runnable))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(f"README block {i} done" in result.stdout for i in range(len(runnable)))
    multi = tmp_path / "out" / "multi"
    assert {p.name for p in multi.iterdir()} == {"cifar10", "listops", "README.md"}


def test_readme_opens_with_the_two_make_commands() -> None:
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    makefile = (README.parent / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (README.parent / ".ci" / "run").read_text()
