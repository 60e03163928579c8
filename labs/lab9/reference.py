"""Lab 9 reference: the library's implementations."""
from common.spec.theory import expected_tokens
from common.spec.verify import greedy_verify, rejection_step

__all__ = ["expected_tokens", "greedy_verify", "rejection_step"]
