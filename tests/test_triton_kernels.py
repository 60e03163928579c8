"""Triton kernels against torch on fresh random inputs (interpreter mode without a GPU)."""
import pytest
import torch
import torch.nn.functional as F

from common.device import pick_device
from common.triton_kernels import rmsnorm, softmax, vector_add
from common.triton_kernels.vector_add import grid_size

DEV = pick_device()


@pytest.mark.parametrize("n", [1, 1000, 4097])
def test_vector_add_exact(n):
    x, y = torch.randn(n, device=DEV), torch.randn(n, device=DEV)
    assert torch.equal(vector_add(x, y, block=256), x + y)
    assert grid_size(n, 256) == -(-n // 256)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 576), (4, 100)])
def test_rmsnorm_matches_torch(shape, dtype, tol, rng):
    """Against PyTorch's own F.rms_norm (computed in fp32, rounded once): tolerance 1e-5 in fp32, 2e-2 in bf16
    (a few bf16 ulps: the kernel rounds the normalized row before the weight multiply, as HF does)."""
    x = torch.randn(*shape, generator=rng).to(DEV, dtype)
    weight = torch.randn(shape[-1], generator=rng).to(DEV, dtype)
    ref = F.rms_norm(x.float(), (shape[-1],), weight.float(), 1e-5).to(dtype)
    torch.testing.assert_close(rmsnorm(x, weight, 1e-5), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(3, 10), (7, 128), (2, 2, 33)])
def test_softmax_matches_torch(shape):
    x = torch.randn(*shape, device=DEV) * 20  # large logits: max-subtraction must keep exp finite
    torch.testing.assert_close(softmax(x), torch.softmax(x, -1), rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise():
    x = torch.randn(4, 8, device=DEV)
    with pytest.raises(ValueError):
        vector_add(x, torch.randn(4, 9, device=DEV))
    with pytest.raises(ValueError):
        vector_add(x, x, block=100)
    with pytest.raises(ValueError):
        rmsnorm(x, torch.randn(9, device=DEV))
    with pytest.raises(ValueError):
        softmax(torch.zeros(0, 8, device=DEV))
    with pytest.raises(ValueError):
        softmax(torch.ones(4, 8, dtype=torch.int32, device=DEV))
