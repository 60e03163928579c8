"""SGLang's own command-line parser, importable on a CPU-only machine: check a book's `sglang.launch_server`
flags against the installed SGLang instead of trusting them (the GPU-only exercises 8.3 and 9.3)."""
from __future__ import annotations

import argparse
import contextlib
import io
from functools import lru_cache

from .sglang_radix import sglang_radix_module


@lru_cache(maxsize=1)
def sglang_cli_parser() -> argparse.ArgumentParser:
    """The parser `python -m sglang.launch_server` builds (ServerArgs.add_cli_args).

    定义于 第9章 §9.7.3
    """
    sglang_radix_module()   # registers the placeholders SGLang's config imports need without torchvision
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog="sglang.launch_server", exit_on_error=False)
    ServerArgs.add_cli_args(parser)
    return parser


def check_flags(flags: list[str], model_path: str = "MODEL") -> tuple[bool, str]:
    """(accepted, SGLang's error message or "") for `launch_server --model-path MODEL <flags>`.

    定义于 第9章 §9.7.3
    """
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            sglang_cli_parser().parse_args(["--model-path", model_path, *flags])
        except (SystemExit, argparse.ArgumentError) as exc:
            lines = err.getvalue().strip().splitlines()
            return False, (lines[-1] if lines else str(exc)).split("error: ", 1)[-1]
    return True, ""
