"""`python -m common.models prepare [names...]`: build the cached model folders (run by setup)."""
from __future__ import annotations

import sys
import time

from . import MODELS, hf_model_dir


def main(argv: list[str]) -> int:
    """`python -m common.models prepare|list`: build or list the cached model folders.

    本书无对应章节（工具）
    """
    if not argv or argv[0] not in ("prepare", "list"):
        print("usage: python -m common.models prepare [NAME ...] | list", file=sys.stderr)
        return 2
    if argv[0] == "list":
        for spec in MODELS.values():
            print(f"{spec.name:14s} {spec.description}")
        return 0
    for name in argv[1:] or list(MODELS):
        start = time.perf_counter()
        path = hf_model_dir(name)
        print(f"[models] {name}: {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
