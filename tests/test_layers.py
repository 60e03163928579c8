"""common.model.layers against PyTorch's own implementations (independent references)."""
import pytest
import torch
import torch.nn.functional as F

from common.model.layers import RMSNorm


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 576)])
def test_rmsnorm_module_matches_torch(shape, dtype, tol, rng):
    """RMSNorm (HF's op order, statistics in fp32) against F.rms_norm in fp32: 1e-6 in fp32, 2e-2 in bf16."""
    norm = RMSNorm(shape[-1], 1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[-1], generator=rng))
    x = torch.randn(*shape, generator=rng).to(dtype)
    ref = F.rms_norm(x.float(), (shape[-1],), norm.weight.float(), 1e-5).to(dtype)
    with torch.no_grad():
        torch.testing.assert_close(norm.to(dtype)(x), ref, rtol=tol, atol=tol)
