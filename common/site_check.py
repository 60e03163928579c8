"""The site in a real browser: headless Chromium (Debian's `chromium`) driven over the DevTools protocol.

    python -m common.site_check [--site .cache/site] [--shots .cache/site-shots] [page ...]

For each page (default: index.html and the first chapter notebook page) it loads the file, collects every
console error, uncaught exception and failed load, checks that every <img> loaded (complete and naturalWidth
> 0), and saves a screenshot. The protocol client is a few lines over aiohttp's websocket (already a
dependency), so no browser driver package or downloaded browser is needed.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .paths import CACHE_DIR, relative_to_repo
from .site import DEFAULT_OUT

DEFAULT_SHOTS = CACHE_DIR / "site-shots"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
LAUNCH_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IMAGES_JS = """JSON.stringify(Array.from(document.images).map(i => ({src: i.src.slice(0, 80),
  complete: i.complete, naturalWidth: i.naturalWidth})))"""


@dataclass
class PageReport:
    """One page checked in the browser: console errors, images and its screenshot.

    本书无对应章节（工具）
    """
    page: str
    errors: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    screenshot: Path | None = None
    title: str = ""

    @property
    def broken_images(self) -> list[dict]:
        return [i for i in self.images if not i["complete"] or i["naturalWidth"] <= 0]

    @property
    def ok(self) -> bool:
        return not self.errors and not self.broken_images


def find_chromium() -> str | None:
    """The Chromium binary (CHROMIUM env var first), or None.

    本书无对应章节（工具）
    """
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in CHROMIUM_CANDIDATES if (path := shutil.which(name))), None)


class DevTools:
    """One page target over the DevTools websocket: `await send(method, params)`, events collected in order.

    本书无对应章节（工具）
    """

    def __init__(self, ws):
        self.ws, self.next_id, self.events = ws, 0, []
        self.pending: dict[int, asyncio.Future] = {}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)

    async def send(self, method: str, params: dict | None = None, timeout_s: float = 60) -> dict:
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params or {}}))
        reply = await asyncio.wait_for(future, timeout_s)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def wait_event(self, method: str, start: int, timeout_s: float = 60) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.events[start:]:
                if event["method"] == method:
                    return event
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no {method} within {timeout_s:.0f} s")


def _errors_of(events: list[dict]) -> list[str]:
    errors = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif e["method"] == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
            errors.append(f"{p['entry']['source']}: {p['entry']['text']} {p['entry'].get('url', '')[:120]}")
    return errors


async def _check(port: int, site: Path, pages: list[str], shots: Path) -> list[PageReport]:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{port}/json/new?about:blank") as resp:
            target = await resp.json(content_type=None)
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            tools = DevTools(ws)
            for domain in ("Page", "Runtime", "Log"):
                await tools.send(f"{domain}.enable")
            await tools.send("Emulation.setDeviceMetricsOverride",
                             {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
            reports = []
            for rel in pages:
                start = len(tools.events)
                await tools.send("Page.navigate", {"url": (site / rel).resolve().as_uri()})
                await tools.wait_event("Page.loadEventFired", start)
                await asyncio.sleep(0.5)   # late script errors
                report = PageReport(rel)
                images = await tools.send("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True})
                report.images = json.loads(images["result"]["value"])
                title = await tools.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True})
                report.title = title["result"]["value"]
                shot = await tools.send("Page.captureScreenshot", {"format": "png"})
                report.screenshot = shots / (rel.replace("/", "__").removesuffix(".html") + ".png")
                report.screenshot.write_bytes(base64.b64decode(shot["data"]))
                report.errors = _errors_of(tools.events[start:])
                reports.append(report)
            tools.reader.cancel()
            return reports


def check_site(site: Path = DEFAULT_OUT, pages: list[str] | None = None, shots: Path = DEFAULT_SHOTS,
               chromium: str | None = None, timeout_s: float = 120) -> list[PageReport]:
    """Load `pages` (paths relative to `site`) in headless Chromium; one report per page.

    本书无对应章节（工具）
    """
    site, shots = Path(site), Path(shots)
    if not (site / "index.html").exists():
        raise FileNotFoundError(f"no site at {relative_to_repo(site)}: run `make site` first")
    if pages is None:
        first = sorted((site / "chapters").glob("*/*.html"))
        pages = ["index.html"] + ([first[0].relative_to(site).as_posix()] if first else [])
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("Chromium not found: `make site-test` installs Debian's `chromium` package "
                                "(or set CHROMIUM=/path/to/chrome)")
    shots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="site-chromium-") as profile:
        proc = subprocess.Popen([chromium, *LAUNCH_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                 "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            port_file, deadline = Path(profile) / "DevToolsActivePort", time.monotonic() + 60
            while not port_file.exists() or not port_file.read_text().strip():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Chromium did not start (exit code {proc.poll()})")
                time.sleep(0.1)
            port = int(port_file.read_text().splitlines()[0])
            return asyncio.run(asyncio.wait_for(_check(port, site, pages, shots), timeout_s))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    """Check the built site in headless Chromium; non-zero on any console error or broken image.

    本书无对应章节（工具）
    """
    parser = argparse.ArgumentParser(prog="python -m common.site_check")
    parser.add_argument("--site", default=str(DEFAULT_OUT))
    parser.add_argument("--shots", default=str(DEFAULT_SHOTS))
    parser.add_argument("pages", nargs="*")
    args = parser.parse_args(argv)
    reports = check_site(Path(args.site), args.pages or None, Path(args.shots))
    for r in reports:
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.page}: {len(r.images)} images "
              f"({len(r.broken_images)} broken), {len(r.errors)} console errors, "
              f"screenshot {relative_to_repo(r.screenshot)}")
        for e in r.errors:
            print(f"     {e}")
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
