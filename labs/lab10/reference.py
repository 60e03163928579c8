"""Lab 10 reference: the functions the server (common.serve) itself uses."""
from common.engine.sampling_params import SamplingParams
from common.serve.protocol import ChatCompletionRequest, CompletionRequest
from common.serve.sse import IncrementalDetokenizer, final_text, sse_event, stream_sse
from common.serve.validation import APIError, Limits, validate_request

__all__ = ["sse_event", "IncrementalDetokenizer", "stream_sse", "validate_request", "final_text", "APIError",
           "Limits", "SamplingParams", "CompletionRequest", "ChatCompletionRequest"]
