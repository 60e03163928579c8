"""Lab 11 reference solutions: the same names as exercises.py, bound to the library in common/advanced."""
from common.advanced.flash import flash_attention_forward
from common.advanced.moe import capacity_keep, expert_capacity, load_balancing_loss, route
from common.advanced.sinks import sink_window_mask

__all__ = ["flash_attention_forward", "route", "expert_capacity", "capacity_keep", "load_balancing_loss",
           "sink_window_mask"]
