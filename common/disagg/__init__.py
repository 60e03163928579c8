"""Exercise 7.3: prefill/decode (PD) disaggregation from scratch on one CPU.

A prefill worker process and a decode worker process, each pinned to its own core with one thread.
The prefill worker runs the prompt, writes the request's K/V into blocks of a shared-memory pool
(`transfer.SharedKVPool`) and sends a small `KVHeader` (request id, block ids, length, first token)
over a queue; the decode worker copies the blocks into its own cache, hands the block ids back, and
decodes every request it holds as one batch (continuous: new requests join between steps).

    from common.disagg import TimedRequest, run_disaggregated, run_colocated
"""
from .runs import RequestResult, TimedRequest, run_colocated, run_disaggregated, summarize
from .transfer import KVHeader, SharedKVPool

__all__ = ["KVHeader", "RequestResult", "SharedKVPool", "TimedRequest", "run_colocated", "run_disaggregated",
           "summarize"]
