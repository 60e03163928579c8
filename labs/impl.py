"""Pick which implementation a lab's tests grade: the reader's, the reference, or pristine stubs.

LAB_IMPL unset or "student": labs/labN/exercises.py (what `make lab-N` grades)
LAB_IMPL=reference:         labs/labN/reference.py (what `make check-labs` proves passes)
LAB_IMPL=<folder>:          <folder>/exercises.py (the committed stubs, which must fail)
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType


def load_impl(lab_dir: Path) -> ModuleType:
    choice = os.environ.get("LAB_IMPL", "student")
    if choice == "student":
        path = lab_dir / "exercises.py"
    elif choice == "reference":
        path = lab_dir / "reference.py"
    else:
        path = Path(choice) / "exercises.py"
    spec = importlib.util.spec_from_file_location(f"{lab_dir.name}_{path.stem}_impl", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
