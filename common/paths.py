"""Where things live: the repository root, the git-ignored cache, the figures folder."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("LLM_LABS_CACHE", REPO_ROOT / ".cache"))
FIGURES_DIR = REPO_ROOT / "figures"
# `make notebooks` (executing notebooks to commit them) sets this; any other run writes figures under
# .cache/, so that `make test` or a reader's own run never changes the committed figures.
COMMIT_FIGURES_ENV = "LLM_LABS_COMMIT_FIGURES"


def figures_root() -> Path:
    """Where figures are written: the committed folder when committing, else the git-ignored cache.

    本书无对应章节（工具）
    """
    return FIGURES_DIR if os.environ.get(COMMIT_FIGURES_ENV) == "1" else CACHE_DIR / "figures"


def figure_path(chapter: str, name: str) -> Path:
    """Path of a figure under <figures root>/<chapter>/, creating the folder.

    本书无对应章节（工具）
    """
    folder = figures_root() / chapter
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def relative_to_repo(path: str | os.PathLike) -> str:
    """A path as a reader should see it: relative to the repository, never the machine's absolute path.

    本书无对应章节（工具）
    """
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return Path(path).name


def show_figure(fig, chapter: str, name: str, dpi: int = 80) -> None:
    """Save `fig`, close it, and display the saved file, so the inline figure is byte-identical to the file.

    Returns None: a returned path on a cell's last line would show the machine's absolute path.

    本书无对应章节（工具）
    """
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    path = figure_path(chapter, name)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    display(Image(filename=str(path)))
