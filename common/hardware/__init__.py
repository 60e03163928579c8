"""Hardware and calculators (chapter 3, and chapter 10's cost): the machine measured now (`machine`: peak FLOP/s,
bandwidth, timers; `batch_sweep`: the decode knee; `peak_memory`; `monitor`), datasheet GPUs (`gpu_specs`), the
roofline (`roofline`), memory budgets (`memory_calc`), SM occupancy (`occupancy`) and serving cost (`cost`).
"""
