"""Cache-aware router in front of engine replicas: `python -m common.router --backends U1,U2 --policy prefix`."""
from .app import Router, routing_key
from .policies import POLICIES, PrefixAware, RoundRobin, SessionSticky, make_policy

__all__ = ["Router", "routing_key", "POLICIES", "PrefixAware", "RoundRobin", "SessionSticky", "make_policy"]
