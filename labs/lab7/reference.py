"""Lab 7 reference: the scheduler functions the engine itself uses."""
from common.engine.scheduler import admit, chunk_tokens, pick_victim, policy_key

__all__ = ["admit", "chunk_tokens", "pick_victim", "policy_key"]
