"""RTN quantization, INT4 packing and the weight-only QuantLinear, on fresh random tensors."""
import math

import pytest
import torch

from common.quant.packing import pack_int4_int32, pack_int4_uint8, unpack_int4_int32, unpack_int4_uint8
from common.quant.qlinear import QuantLinear, model_weight_bytes, quantize_model
from common.quant.rtn import dequantize, quant_dequant, quantize, sqnr_db


def brute_force_sym(x: torch.Tensor, bits: int, g: int) -> torch.Tensor:
    """Per-row, per-group symmetric RTN written with Python loops: the oracle."""
    out = torch.empty_like(x)
    qmax = 2 ** (bits - 1) - 1
    for r in range(x.shape[0]):
        for c0 in range(0, x.shape[1], g):
            grp = x[r, c0:c0 + g]
            s = grp.abs().max().clamp_min(1e-12) / qmax
            out[r, c0:c0 + g] = torch.clamp(torch.round(grp / s), -qmax - 1, qmax) * s
    return out


@pytest.mark.parametrize("bits,g", [(8, 64), (4, 128), (4, 32), (3, 50)])
def test_symmetric_group_matches_brute_force(bits, g):
    x = torch.randn(6, 200)  # 200 is not a multiple of 64/128/32: ragged last group
    assert torch.allclose(quant_dequant(x, bits, True, g), brute_force_sym(x, bits, g), atol=1e-6)


@pytest.mark.parametrize("gran", ["tensor", "channel", 64])
def test_asymmetric_error_is_at_most_half_a_step(gran):
    x = torch.randn(8, 192) * 3 + 1
    qt = quantize(x, 4, symmetric=False, granularity=gran)
    assert int(qt.q.min()) >= 0 and int(qt.q.max()) <= 15
    step = qt.scale.max()
    assert (dequantize(qt) - x).abs().max() <= step / 2 + 1e-5


def test_finer_granularity_and_more_bits_lower_error():
    x = torch.randn(64, 512) * torch.logspace(-1, 1, 512)  # columns with very different ranges
    errs = [sqnr_db(x, quant_dequant(x, 4, True, g)) for g in ("tensor", "channel", 128, 32)]
    assert errs == sorted(errs)
    assert sqnr_db(x, quant_dequant(x, 8)) > sqnr_db(x, quant_dequant(x, 4)) + 20


def test_uniform_signal_sqnr_matches_step_squared_over_12():
    # full-range uniform signal, 2^b levels over [min, max]: SQNR = 20·log10(2^b − 1) -> 6.02·b dB
    x = torch.rand(1, 200_000) * 2 - 1
    for bits in (4, 6, 8):
        measured = sqnr_db(x, quant_dequant(x, bits, False, "tensor"))
        assert abs(measured - 20 * math.log10(2 ** bits - 1)) < 0.3
        assert abs(measured - 6.02 * bits) < 0.6


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        quantize(torch.arange(4), 8)
    with pytest.raises(ValueError):
        quantize(torch.randn(4, 4), 9)
    with pytest.raises(ValueError):
        quantize(torch.randn(4, 4), 4, granularity=0)
    with pytest.raises(ValueError):
        pack_int4_uint8(torch.tensor([[9, 0]], dtype=torch.int8))
    with pytest.raises(ValueError):
        pack_int4_int32(torch.zeros(2, 12, dtype=torch.int8))


@pytest.mark.parametrize("signed", [True, False])
def test_packing_round_trip(signed):
    lo, hi = (-8, 8) if signed else (0, 16)
    codes = torch.randint(lo, hi, (5, 64), dtype=torch.int8)
    p8, p32 = pack_int4_uint8(codes, signed), pack_int4_int32(codes, signed)
    assert p8.dtype == torch.uint8 and p8.shape == (5, 32) and p32.dtype == torch.int32 and p32.shape == (5, 8)
    assert torch.equal(unpack_int4_uint8(p8, signed), codes)
    assert torch.equal(unpack_int4_int32(p32, signed), codes)
    # layout: element 0 in the low nibble, element 1 in the high nibble
    assert int(p8[0, 0]) == (int(codes[0, 0]) & 0xF) | ((int(codes[0, 1]) & 0xF) << 4)


@pytest.mark.parametrize("bits,sym,gran", [(4, True, 128), (4, False, 64), (8, True, "channel"), (4, False, "tensor")])
def test_quant_linear_equals_linear_with_dequantized_weight(bits, sym, gran):
    lin = torch.nn.Linear(192, 40, bias=True)
    ql = QuantLinear.from_linear(lin, bits, sym, gran)
    x = torch.randn(3, 5, 192)
    w_hat = quant_dequant(lin.weight.detach(), bits, sym, gran)
    # scales are stored in fp16: the layer's weight equals RTN's up to fp16 rounding of the scale
    assert torch.allclose(ql.dequantized_weight(), w_hat, rtol=2e-3, atol=1e-6)
    assert torch.allclose(ql(x), torch.nn.functional.linear(x, ql.dequantized_weight(), lin.bias), atol=1e-5)
    if bits == 4:
        assert ql.codes.dtype == torch.uint8 and ql.codes.shape == (40, 96)


def test_quantize_model_on_tiny_shrinks_weights_and_stays_close():
    from common.models import load_model

    model = load_model("tiny", "float32")
    ids = torch.randint(0, 1000, (1, 12))
    ref = model(ids)
    before = model_weight_bytes(model)
    quantize_model(model, bits=8, granularity="channel")
    assert model_weight_bytes(model) < before
    out = model(ids)
    assert torch.allclose(out, ref, atol=5e-2 * ref.abs().max().item())
    assert not math.isnan(float(out.sum()))
