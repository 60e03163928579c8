"""Build the repo's small C++ CPU kernels once per machine, and say clearly when a machine cannot.

`load_cpu_extension` compiles a source string with `torch.utils.cpp_extension.load_inline` into
.cache/torch_extensions/<name> (tens of seconds the first time; later processes load the cached library
in milliseconds). Flags: -O3 and -march=native (this CPU's vector units: AVX-512 and AVX512-BF16 here),
and -fopenmp so `at::parallel_for` in the kernels runs on torch's threads; without it the kernels would
run on one core.
"""
from __future__ import annotations

import functools
import logging
import shutil
from types import ModuleType

from .paths import CACHE_DIR

logger = logging.getLogger(__name__)

CFLAGS = ["-O3", "-march=native", "-fopenmp"]


@functools.cache
def load_cpu_extension(name: str, source: str, functions: tuple[str, ...]) -> ModuleType:
    """The compiled module exposing `functions` (built on the first call on a machine, then cached).

    本书无对应章节（工具）
    """
    from torch.utils.cpp_extension import load_inline

    build_dir = CACHE_DIR / "torch_extensions" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    return load_inline(name=name, cpp_sources=source, functions=list(functions), extra_cflags=CFLAGS,
                       extra_ldflags=["-lgomp"], build_directory=str(build_dir))


def cpu_extension_available(name: str, source: str, functions: tuple[str, ...], fallback: str) -> bool:
    """Whether the extension builds and loads here; if not, log once why and what runs instead (`fallback`).

    本书无对应章节（工具）
    """
    if shutil.which("c++") is None and shutil.which("g++") is None:
        logger.warning("no C++ compiler for %s: %s", name, fallback)
        return False
    try:
        load_cpu_extension(name, source, functions)
    except Exception as exc:   # a broken toolchain must not stop the model: report it and use the eager path
        logger.warning("%s unavailable (%s): %s", name, exc, fallback)
        return False
    return True
