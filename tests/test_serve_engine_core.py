"""The engine loop in its own process (`AsyncEngine.spawn`, the server's default) against the same loop
in a thread and against `LLM.generate`: the same tokens; a killed engine process fails every request
in flight with a clear error and calls `on_crash`; a start that fails says why."""
import asyncio
import random

import pytest

from common.engine import LLM, EngineConfig, SamplingParams
from common.serve.async_engine import AsyncEngine, EngineDead
from common.serve.metrics import EngineMetrics

CONFIG = EngineConfig(dtype="float32", device="cpu", num_blocks=128, block_size=8)
GREEDY = dict(temperature=0.0, ignore_eos=True)


def _prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(49152) for _ in range(rng.randint(1, 30))] for _ in range(n)]


async def _collect_all(engine: AsyncEngine, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    async def one(prompt):
        out = []
        async with await engine.submit(prompt, params) as stream:
            async for events in stream:
                out += [t for e in events for t in e.token_ids]
        return out
    return list(await asyncio.gather(*(one(p) for p in prompts)))


def _run(engine: AsyncEngine, body):
    async def main():
        engine.start()
        try:
            return await body(engine)
        finally:
            await engine.stop()
    return asyncio.run(main())


def test_process_core_gives_the_tokens_of_generate_and_of_the_thread_core(rng_seed):
    prompts, params = _prompts(6, rng_seed), SamplingParams(max_tokens=12, **GREEDY)
    llm = LLM("tiny", config=CONFIG)
    want = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    in_thread = _run(AsyncEngine(LLM("tiny", config=CONFIG)), lambda e: _collect_all(e, prompts, params))
    metrics = EngineMetrics("tiny")
    spawned = AsyncEngine.spawn("tiny", CONFIG, metrics)

    async def body(engine):
        outs = await _collect_all(engine, prompts, params)
        for _ in range(100):                       # the last step's snapshot follows its tokens
            if engine.snapshot.num_running == 0:
                break
            await asyncio.sleep(0.02)
        return outs, engine.snapshot
    in_process, snapshot = _run(spawned, body)
    assert in_thread == want, f"thread core differs from generate (seed {rng_seed})"
    assert in_process == want, f"process core differs from generate (seed {rng_seed})"
    assert snapshot.num_running == 0 and snapshot.steps >= 12
    text = metrics.render().decode()
    assert f'vllm:generation_tokens_total{{engine="0",model_name="tiny"}} {6 * 12}.0' in text
    assert 'vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"} 6.0' in text
    assert not spawned.core.running, "stop() ends the engine process"


def test_killed_engine_process_fails_requests_in_flight_and_calls_on_crash():
    crashes: list[BaseException] = []
    engine = AsyncEngine.spawn("tiny", CONFIG, on_crash=crashes.append)

    async def body(engine):
        stream = await engine.submit([5, 6, 7], SamplingParams(max_tokens=1000, **GREEDY))
        got = await stream.__anext__()              # the request is running
        engine.core.process.kill()
        with pytest.raises(EngineDead) as err:
            async for _ in stream:
                pass
        with pytest.raises(EngineDead):
            await engine.submit([1], SamplingParams(max_tokens=2))
        return got, err.value
    got, error = _run(engine, body)
    assert got and got[0].token_ids
    assert error.crashed and "exit code -9" in str(error), str(error)
    assert len(crashes) == 1 and not engine.alive


def test_engine_process_that_cannot_start_says_why():
    with pytest.raises(RuntimeError, match="failed to start.*no-such-model"):
        AsyncEngine.spawn("no-such-model", CONFIG)
