"""Resuming a run: the saved config.json must equal the new config but for the fields a resume may change.

changes = check_resume_config("runs/x/config.json", config, allow_change=False)
"""

from __future__ import annotations

import json
import os
from typing import Any

from config import ConfigError, Mask2FormerConfig, read_config_json

# Fields a resumed run may change: how long it runs (not shorter than where it is), what it logs and keeps,
# where it is, what evaluation and rendering use.
RESUMABLE_CHANGES = {
    "train.max_steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.max_nonfinite_steps",
    "train.output_dir",
    "data.val_files",
    "inference.score_threshold",
    "inference.batch_size",
}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`section.field: old -> new` for every field that differs between two `to_dict()` configs."""
    changes = []
    for section in sorted(set(old) | set(new)):
        before, after = old.get(section, {}), new.get(section, {})
        for key in sorted(set(before) | set(after)):
            a, b = before.get(key), after.get(key)
            if isinstance(a, list | tuple) and isinstance(b, list | tuple):
                a, b = list(a), list(b)
            if a != b:
                changes.append(f"{section}.{key}: {_as_text(a)} -> {_as_text(b)}")
    return changes


def check_resume_config(path: str, config: Mask2FormerConfig, allow_change: bool) -> list[str]:
    """Compares `config` with the run folder's saved config.json at `path` before a resume.

    Returns the differences (all harmless, or accepted with `allow_change`); raises ConfigError listing
    those outside `RESUMABLE_CHANGES` otherwise. A missing or unreadable saved config counts as no change.
    """
    try:
        saved = read_config_json(path)
        Mask2FormerConfig.from_dict(saved)  # only a config this version reads is compared
    except ConfigError:
        return []
    changes = config_differences(saved, config.to_dict())
    blocking = [c for c in changes if c.split(":")[0] not in RESUMABLE_CHANGES]
    if blocking and not allow_change:
        folder = os.path.dirname(path) or "."
        raise ConfigError(
            f"{folder} was trained with another config ({'; '.join(blocking)}); resume with the same "
            "settings, set another train.output_dir for a new run, or pass --allow_config_change to resume anyway"
        )
    return changes


def _as_text(value: Any) -> str:
    return json.dumps(value) if value is not None else "none"
