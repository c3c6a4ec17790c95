"""Pushing FPT adapters to the Hugging Face Hub with the model card that says how to load them.

transformers' ``push_to_hub`` replaces ``README.md`` with the remote card (or a generic template), which would
drop the note that ``import fpt_peft`` is needed to load the adapter. For models holding an FPT adapter,
``PeftModel.push_to_hub`` therefore uploads exactly the folder ``save_pretrained`` writes (without fpt-peft's lock
file); other models are untouched.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi
from peft import PeftModel

from .safe_io import is_internal_file

_ORIGINAL_PUSH = PeftModel.push_to_hub


def has_fpt_adapter(model: PeftModel) -> bool:
    """Whether ``model`` holds at least one FPT adapter."""
    from .config import FPTConfig

    return any(isinstance(c, FPTConfig) for c in getattr(model, "peft_config", {}).values())


def push_to_hub(
    self: PeftModel,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    create_pr: bool = False,
    revision: str | None = None,
    **kwargs: Any,
) -> Any:
    """Upload what ``save_pretrained`` writes (adapter weights, config, model card) to the Hub repo ``repo_id``."""
    if not has_fpt_adapter(self):
        return _ORIGINAL_PUSH(
            self,
            repo_id,
            commit_message=commit_message,
            commit_description=commit_description,
            private=private,
            token=token,
            create_pr=create_pr,
            revision=revision,
            **kwargs,
        )
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        self.save_pretrained(folder)
        root = Path(folder)
        operations = [
            CommitOperationAdd(path_in_repo=path.relative_to(root).as_posix(), path_or_fileobj=str(path))
            for path in sorted(root.rglob("*"))
            if path.is_file() and not any(is_internal_file(part) for part in path.relative_to(root).parts)
        ]
        return api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=commit_message or "Upload FPT adapter",
            commit_description=commit_description,
            create_pr=create_pr,
            revision=revision,
        )


def install() -> None:
    """Route ``PeftModel.push_to_hub`` through :func:`push_to_hub` (idempotent)."""
    PeftModel.push_to_hub = push_to_hub  # type: ignore[method-assign,assignment]
