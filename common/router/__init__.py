"""Cache-aware router in front of engine replicas: `python -m common.router --backends U1,U2 --policy prefix`."""
from .app import Router, RouterConfig, routing_key
from .health import HealthConfig
from .policies import POLICIES, LeastLoaded, PrefixAware, RoundRobin, SessionSticky, make_policy

__all__ = ["Router", "RouterConfig", "HealthConfig", "routing_key", "POLICIES", "LeastLoaded", "PrefixAware",
           "RoundRobin", "SessionSticky", "make_policy"]
