"""Run by SGLang's own interpreter (.venv/sglang/bin/python): `python sglang_offline_child.py spec.json out.json`.

Imports only the standard library and sglang (that environment has no `common` package and its own torch).
Starts one `sglang.Engine`, runs each job of the spec in order, greedy, and writes per job the wall time and
every request's output token ids and SGLang's own latency numbers (meta_info), then shuts the engine down.
"""
from __future__ import annotations

import json
import sys
import time


def main(spec_path: str, out_path: str) -> None:
    """Run the spec's workload through `sglang.Engine` and write outputs and timings as JSON.

    定义于 第6章 §6.3.4
    """
    import sglang

    spec = json.loads(open(spec_path).read())
    t0 = time.perf_counter()
    engine = sglang.Engine(model_path=spec["model_path"], **spec.get("engine", {}))
    startup = time.perf_counter() - t0
    jobs = []
    try:
        for job in spec["jobs"]:
            params = job.get("sampling_per_prompt") or job["sampling"]
            t0 = time.perf_counter()
            outs = engine.generate(input_ids=job["input_ids"], sampling_params=params)
            elapsed = time.perf_counter() - t0
            jobs.append({"name": job["name"], "elapsed_s": elapsed,
                         "outputs": [{"token_ids": list(o.get("output_ids") or []),
                                      "meta_info": {k: v for k, v in o.get("meta_info", {}).items()
                                                    if isinstance(v, (int, float, str, type(None)))}}
                                     for o in outs]})
    finally:
        engine.shutdown()
    with open(out_path, "w") as f:
        json.dump({"version": sglang.__version__, "startup_s": startup, "jobs": jobs}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
