"""SGLang's real launch_server parser accepts the flags it defines and refuses invented ones."""
from __future__ import annotations

import pytest

from common.peers.sglang_args import check_flags


@pytest.mark.parametrize("flags", [["--quantization", "gptq_marlin"], ["--quantization", "awq_marlin"],
                                   ["--speculative-algorithm", "EAGLE3", "--speculative-draft-model-path", "d",
                                    "--speculative-num-steps", "3", "--speculative-eagle-topk", "4",
                                    "--speculative-num-draft-tokens", "16"]])
def test_real_flags_are_accepted(flags):
    assert check_flags(flags) == (True, "")


@pytest.mark.parametrize("flags", [["--speculative-max-tokens", "8"], ["--quantization", "int4-magic"]])
def test_invented_flags_are_refused_with_sglangs_message(flags):
    accepted, message = check_flags(flags)
    assert not accepted and message
