"""`make check-labs`: every lab's tests must pass on the reference and fail on the untouched stubs.

A test that passes on a stub is a test that cannot fail, so the stub run must pass nothing.
The stubs are taken from git HEAD (the reader may have edited the working copy).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_tests(lab: Path, impl: str) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        env = dict(os.environ, LAB_IMPL=impl)
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(lab),
                        f"--junitxml={report}"], env=env, cwd=ROOT, capture_output=True, text=True)
        if not report.exists():
            return {"tests": 0, "failed": 0, "passed": 0}
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        tests = int(suite.get("tests", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        return {"tests": tests, "failed": failed, "passed": tests - failed - skipped}


def pristine_stubs(lab: Path, dest: Path) -> None:
    """Write the committed exercises.py of `lab` into dest (working copy if git has none)."""
    rel = (lab / "exercises.py").relative_to(ROOT).as_posix()
    shown = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=ROOT, capture_output=True, text=True)
    text = shown.stdout if shown.returncode == 0 else (lab / "exercises.py").read_text()
    (dest / "exercises.py").write_text(text)


def main() -> int:
    labs = sorted(p for p in (ROOT / "labs").glob("lab*") if p.is_dir() and list(p.glob("test_*.py")))
    if not labs:
        print("no labs yet: nothing to check")
        return 0
    ok = True
    print(f"{'lab':8s} {'reference':>18s} {'untouched stubs':>22s}  verdict")
    for lab in labs:
        ref = run_tests(lab, "reference")
        with tempfile.TemporaryDirectory() as tmp:
            pristine_stubs(lab, Path(tmp))
            stub = run_tests(lab, tmp)
        good = ref["tests"] > 0 and ref["passed"] == ref["tests"] and stub["passed"] == 0 and stub["tests"] > 0
        ok &= good
        print(f"{lab.name:8s} {ref['passed']:>6d}/{ref['tests']:<3d} passed "
              f"{stub['failed']:>10d}/{stub['tests']:<3d} failed  "
              f"{'ok' if good else 'BROKEN'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
