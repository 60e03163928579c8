"""Chaos: two real replicas of our server (tiny model) behind the router, steady streaming load, one
replica SIGKILLed mid-run and restarted. Nothing may be lost before the first byte, every cut stream
must end with an error event, and no request may reach the dead replica after its ejection."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from common.router.chaos import run_chaos
from common.serve.launch import ServerProcess


def test_replica_kill_and_restart_under_load(tmp_path):
    replicas = [ServerProcess("tiny", dtype="float32", env={"OMP_NUM_THREADS": "1"},
                              log_path=tmp_path / f"replica{i}.log") for i in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:                 # start both at once: the startup is mostly imports
            list(pool.map(lambda r: r.start(), replicas))
        report = run_chaos(replicas, replicas[0].model_name, victim=1, log_dir=tmp_path, seed=0)
    finally:
        for r in replicas:
            r.stop()
    print(report.summary())
    counts = report.counts
    assert counts["failed_before_first_byte"] == 0, [o for o in report.outcomes if o.kind != "ok"][:3]
    assert counts["cut_without_error_event"] == 0
    assert counts["ok"] >= 20                                # steady load, before and after the fault
    assert report.ejected_at is not None and report.readmitted_at is not None
    assert report.dispatched_while_ejected == 0
    assert report.dispatched_after_readmission > 0          # the restarted replica is back in rotation
    assert sum(o.replica == 1 and o.kind == "ok" and o.start > report.readmitted_at for o in report.outcomes) > 0
    assert report.router_stats["in_flight"] == [0, 0]
