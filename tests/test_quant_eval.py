"""common.quant.eval.perplexity against transformers' own loss (`labels=`), on the same windows and weights."""
import math

import pytest
import torch

from common.models import load_tokenizer
from common.quant.eval import eval_token_ids, perplexity


def test_perplexity_matches_transformers_labels_loss(model_pair):
    """Non-overlapping windows scored from their own start: HF's mean shifted cross-entropy per window,
    averaged over windows of equal length, is the same mean NLL. fp32 on both sides: 1e-4 relative."""
    name, ours, hf = model_pair
    window, windows = 64, 3
    ids = eval_token_ids(load_tokenizer("smollm2-135m"))[: window * windows + 5]   # a tail that is dropped
    batch = torch.tensor(ids[: window * windows]).reshape(windows, window)
    with torch.no_grad():
        losses = [float(hf(input_ids=row[None], labels=row[None]).loss) for row in batch]
    expected = math.exp(sum(losses) / len(losses))
    assert perplexity(ours, ids, window=window, batch_size=2) == pytest.approx(expected, rel=1e-4)


def test_perplexity_needs_one_window(tiny):
    with pytest.raises(ValueError):
        perplexity(tiny, list(range(10)), window=64)
