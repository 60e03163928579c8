"""Which replicas may get traffic: active health checks, ejection and readmission.

Every `interval_s` the router GETs each replica's /health (timeout `timeout_s`). `unhealthy_after`
failed probes in a row eject a replica; `healthy_after` good probes in a row readmit it (as Envoy's
and nginx's active health checks do). A connection refused while proxying ejects at once (passive
outlier detection): a killed replica then stops getting requests before the next probe.
Every ejection and readmission is logged with its time, so a test can check that no request was
dispatched to a replica between its ejection and its readmission.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class HealthConfig:
    """Health-check period, timeout and the thresholds to eject and readmit a replica.

    定义于 第10章 §10.9
    """
    interval_s: float = 1.0
    timeout_s: float = 1.0
    unhealthy_after: int = 2
    healthy_after: int = 2

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.timeout_s <= 0:
            raise ValueError(f"health interval and timeout must be > 0, got {self.interval_s}, {self.timeout_s}")
        if self.unhealthy_after < 1 or self.healthy_after < 1:
            raise ValueError("unhealthy_after and healthy_after must be >= 1")


@dataclass
class ReplicaHealth:
    """One replica's probe streak and whether it is in rotation.

    定义于 第10章 §10.9
    """

    healthy: bool = True            # optimistic at start: the first failed probes or a refused connection eject it
    failed_probes: int = 0          # in a row
    good_probes: int = 0            # in a row
    ejections: int = 0


@dataclass
class HealthTable:
    """Health of every replica plus a timestamped log of ejections and readmissions.

    定义于 第10章 §10.9
    """

    num_replicas: int
    config: HealthConfig = field(default_factory=HealthConfig)

    def __post_init__(self) -> None:
        self.replicas = [ReplicaHealth() for _ in range(self.num_replicas)]
        self.events: list[dict] = []

    def healthy(self) -> list[int]:
        return [i for i, r in enumerate(self.replicas) if r.healthy]

    def record_probe(self, i: int, ok: bool) -> None:
        r = self.replicas[i]
        if ok:
            r.failed_probes, r.good_probes = 0, r.good_probes + 1
            if not r.healthy and r.good_probes >= self.config.healthy_after:
                r.healthy = True
                self._log("readmit", i, f"{r.good_probes} good probes")
        else:
            r.good_probes, r.failed_probes = 0, r.failed_probes + 1
            if r.healthy and r.failed_probes >= self.config.unhealthy_after:
                self.eject(i, f"{r.failed_probes} failed probes")

    def eject(self, i: int, reason: str) -> None:
        r = self.replicas[i]
        r.good_probes = 0             # readmission needs fresh good probes after the failure
        if r.healthy:
            r.healthy = False
            r.ejections += 1
            self._log("eject", i, reason)

    def _log(self, event: str, i: int, reason: str) -> None:
        self.events.append({"t": time.time(), "event": event, "replica": i, "reason": reason})
