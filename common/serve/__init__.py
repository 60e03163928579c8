"""Chapter 10: an OpenAI-compatible HTTP server on our engine (`python -m common.serve`).

- `engine_loop.EngineLoop`: the one owner of the LLM: commands in, one message of new tokens per step out.
- `engine_core`: where that loop runs: `ProcessCore` (its own process, the server's default, as vLLM V1)
  or `ThreadCore` (a thread of this process: tests, in-process apps).
- `async_engine.AsyncEngine`: the asyncio side: submit/abort, a queue per request, metrics from the messages.
- `validation.validate_request`: raw body → (request, prompt ids, SamplingParams) or APIError (400/429).
- `sse`: `sse_event`, `IncrementalDetokenizer` (lab 10's simple version), `stream_sse` (token events → SSE chunks).
- `detokenize.StreamingDetokenizer`: the server's detokenizer, O(new tokens) per push (DecodeStream).
- `logprobs.LogprobFormat`: the engine's per-token logprobs in OpenAI's completions / chat formats.
- `reliability`: the numbers of chapter 10's reliability table (load, KV exhaustion, fuzz, faults, auth).
- `responses`, `protocol`: OpenAI's response / request shapes; `metrics`: vLLM-named Prometheus metrics.
- `guards`: 413 for bodies over --max-body-bytes, bearer auth on /v1 (--api-key), CORS (--allowed-origins).
- `app.create_app`: the FastAPI routes; `launch.ServerProcess`: the server in a child process. A failed
  engine step errors every in-flight request, then the process exits with code 3 for its supervisor.
"""
