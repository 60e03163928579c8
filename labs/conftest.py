from pathlib import Path
from types import ModuleType

import pytest

from labs.impl import load_impl


@pytest.fixture(scope="module")
def impl(request) -> ModuleType:
    """The implementation under test (see labs/impl.py)."""
    return load_impl(Path(request.module.__file__).parent)
