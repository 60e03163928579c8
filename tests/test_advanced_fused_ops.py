"""Residual add + RMSNorm (chapter 11 custom operators): C++ custom op and Triton kernel vs F.rms_norm."""
import pytest
import torch

from common.advanced.fused_ops import add_rms_norm_reference, fused_add_rms_norm
from common.advanced.triton_add_rmsnorm import triton_add_rms_norm


def _inputs(rng, rows, cols):
    x, residual = (torch.randn(rows, cols, generator=rng) for _ in range(2))
    return x, residual, torch.rand(cols, generator=rng) + 0.5


@pytest.mark.parametrize("shape", [(1, 576), (37, 100), (3, 5, 64)])
def test_triton_kernel_matches_reference(rng, shape):
    x, residual, weight = _inputs(rng, int(torch.tensor(shape[:-1]).prod()), shape[-1])
    x, residual = x.view(shape), residual.view(shape)
    y, h = triton_add_rms_norm(x, residual, weight, 1e-5)
    y_ref, h_ref = add_rms_norm_reference(x, residual, weight, 1e-5)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=0, rtol=0)
    with pytest.raises(ValueError):
        triton_add_rms_norm(x, residual[..., :-1], weight)


def test_cpp_custom_op_matches_reference_and_compiles_in_one_graph(rng):
    x, residual, weight = _inputs(rng, int(torch.randint(1, 300, (1,), generator=rng)), 576)
    y, h = torch.ops.llm_labs.fused_add_rms_norm(x, residual, weight, 1e-6)
    y_ref, h_ref = add_rms_norm_reference(x, residual, weight, 1e-6)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=0, rtol=0)

    def block(a, b, w):
        out, hidden = torch.ops.llm_labs.fused_add_rms_norm(a, b, w, 1e-6)
        return out * 2 + hidden

    torch._dynamo.reset()
    compiled = torch.compile(block, backend="eager", fullgraph=True)   # raises on a graph break
    torch.testing.assert_close(compiled(x, residual, weight), y_ref * 2 + h_ref, atol=1e-5, rtol=1e-5)
    report = torch.library.opcheck(fused_add_rms_norm, (x, residual, weight, 1e-6))
    assert all(result == "SUCCESS" for result in report.values()), report
    with pytest.raises(ValueError):
        fused_add_rms_norm(x, residual, weight[:-1], 1e-6)
    with pytest.raises(RuntimeError):
        fused_add_rms_norm(x.double(), residual.double(), weight.double(), 1e-6)
