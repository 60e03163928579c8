"""vLLM's ExampleConnector as the real PD-disaggregation peer (exercise 7.3): common.peers.vllm_kv_connector.

These tests check our copy of the connector's keying rules against vLLM's own code (no engine start). The
end-to-end run (a producer and a consumer engine: loaded KV, same tokens, control prompt, tampered files, stored
bytes against our model's K/V) is asserted by chapters/ch07-scheduling/08-pd-disaggregation.ipynb, which make
test executes: two engine starts once, not twice."""
import random

import pytest

from common.peers.vllm_kv_connector import (
    _storage_key,
    run_kv_connector,
    stored_token_count,
)

BLOCK = 32


def _bare_connector(storage: str):
    """An ExampleConnector without an engine: only the attributes its lookup uses."""
    from vllm.distributed.kv_transfer.kv_connector.v1.example_connector import ExampleConnector

    conn = object.__new__(ExampleConnector)
    conn._storage_path, conn._block_size = storage, BLOCK
    return conn


def test_stored_token_count_equals_the_connectors_alignment(rng_seed):
    from vllm.distributed.kv_transfer.kv_connector.v1.example_connector import align_to_block_size

    rnd = random.Random(rng_seed)
    for n in [34, 35, 64, 66, 96, 100] + [rnd.randrange(34, 3000) for _ in range(50)]:
        lookup = align_to_block_size(n - 1, BLOCK)  # get_num_new_matched_tokens / _found_match_for_prompt
        assert stored_token_count(n, BLOCK) == lookup, n
        if (n - 1) % BLOCK:  # the prompts run_kv_connector accepts: stored prefix == looked-up prefix
            assert align_to_block_size(n, BLOCK) == lookup, n  # ReqMeta.make_meta (the store side)


def test_storage_key_is_the_folder_the_connector_looks_up(tmp_path, rng_seed):
    rnd = random.Random(rng_seed)
    prompt = [rnd.randrange(0, 49152) for _ in range(rnd.randrange(40, 400))]
    other = list(prompt)
    other[rnd.randrange(0, stored_token_count(len(prompt), BLOCK))] ^= 1  # differs inside the stored prefix
    conn = _bare_connector(str(tmp_path))
    assert not conn._found_match_for_prompt(prompt, [])
    (tmp_path / _storage_key(prompt, BLOCK)).mkdir()
    assert conn._found_match_for_prompt(prompt, []), "our key is not the folder vLLM's connector looks for"
    assert conn._found_match_for_prompt(prompt + [7], []) == ((len(prompt) - 1) % BLOCK != 0)
    assert not conn._found_match_for_prompt(other, [])


@pytest.mark.parametrize("block_size, length", [(16, 100), (32, 33), (32, 65), (32, 20)])
def test_run_kv_connector_rejects_what_the_connector_cannot_load(block_size, length):
    with pytest.raises(ValueError, match="block_size"):
        run_kv_connector([[1] * length], [2] * 100, block_size=block_size)
