"""Where things live: the repository root, the git-ignored cache, the figures folder."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("LLM_LABS_CACHE", REPO_ROOT / ".cache"))
FIGURES_DIR = REPO_ROOT / "figures"


def figure_path(chapter: str, name: str) -> Path:
    """Path of a figure under figures/<chapter>/, creating the folder."""
    folder = FIGURES_DIR / chapter
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
