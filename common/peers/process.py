"""A server in a child process: started in its own process group, log to a file, ready when its
health URL answers 200, stopped as a group (servers such as vLLM spawn children that would
otherwise outlive us and keep their memory).

Logs go to .cache/logs/ (`log_file(name)`). What a reader may see of a log (an error's tail) passes
through `shorten_paths`: no absolute path of the machine it ran on, only repo- or package-relative ones.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from ..paths import CACHE_DIR, REPO_ROOT, relative_to_repo

LOG_DIR = CACHE_DIR / "logs"
# an absolute path: "/" not inside a word, a relative path or a URL ("http://host/x" is left alone)
_ABS_PATH = re.compile(r"(?<![\w.~/-])/(?!/)[^\s'\"`:,;()\[\]{}<>]+")
_PACKAGES = re.compile(r".*/(?:site|dist)-packages/")
_STDLIB = re.compile(r".*/lib/python3\.\d+/")


def shorten_path(path: str) -> str:
    """One absolute path as a reader should see it: a package file as 'vllm/engine/x.py', a file of the
    repository relative to it, a standard-library file relative to the library, anything else by name.

    本书无对应章节（工具）
    """
    if _PACKAGES.match(path):
        return _PACKAGES.sub("", path, count=1)
    if _STDLIB.match(path):
        return _STDLIB.sub("", path, count=1)
    root = str(REPO_ROOT).rstrip("/") + "/"
    if path.startswith(root) or path == root.rstrip("/"):
        return relative_to_repo(path)
    return Path(path).name or path


def shorten_paths(text: str) -> str:
    """`text` (a log, a traceback) with every absolute path shortened by `shorten_path`.

    本书无对应章节（工具）
    """
    return _ABS_PATH.sub(lambda m: shorten_path(m.group(0)), text)


def log_file(name: str) -> Path:
    """A fresh, unique log file .cache/logs/<name>-<time>-<random>.log (print it with relative_to_repo).

    本书无对应章节（工具）
    """
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "log"
    fd, path = tempfile.mkstemp(prefix=f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log", dir=LOG_DIR)
    os.close(fd)
    return Path(path)


def tail_lines(path: str | Path, n: int = 40) -> str:
    """The last `n` lines of a log file, with machine paths shortened (`shorten_paths`).

    本书无对应章节（工具）
    """
    path = Path(path)
    if not path.exists():
        return ""
    return shorten_paths("\n".join(path.read_text(errors="replace").splitlines()[-n:]))


def free_port() -> int:
    """A port the OS says is free on 127.0.0.1 right now.

    本书无对应章节（工具）
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout_s: float = 2) -> bool:
    """Whether `url` answers 200 within the timeout: the readiness probe of a child server.

    本书无对应章节（工具）
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status == 200
    except OSError:
        return False


class ManagedServer:
    """`with ManagedServer(args, base_url) as s:` runs `args` until the block ends.

    本书无对应章节（工具）
    """

    def __init__(self, args: list[str], base_url: str, health_path: str = "/health", env: dict | None = None,
                 log_path: str | Path | None = None, startup_timeout_s: float = 120, name: str = "server"):
        self.args, self.base_url, self.health_path = list(args), base_url.rstrip("/"), health_path
        self.env = {**os.environ, **(env or {})}
        self.name = name
        self.log_path = Path(log_path) if log_path else log_file(name)
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Spawn in a new session (= process group) and poll the health URL until it answers 200."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        deadline = t0 + self.startup_timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                code, tail = self.proc.returncode, self.log_tail()
                self.stop()
                raise RuntimeError(f"{self.name} exited with {code} during startup "
                                   f"(full log: {relative_to_repo(self.log_path)}):\n{tail}")
            if http_ok(self.base_url + self.health_path):
                self.startup_s = time.perf_counter() - t0
                return
            time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise TimeoutError(f"{self.name} not healthy after {self.startup_timeout_s:.0f} s "
                           f"(full log: {relative_to_repo(self.log_path)}):\n{tail}")

    def stop(self, grace_s: float = 30) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after `grace_s`."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
        try:  # children (vLLM's engine core) may outlive the leader by a moment
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, n: int = 40) -> str:
        """The last `n` lines of the log, machine paths shortened (safe to print in a notebook)."""
        return tail_lines(self.log_path, n)
