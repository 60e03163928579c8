"""Datasheet numbers of the data-centre GPUs chapter 3 compares, with the source of each row.

Peaks are *dense* Tensor Core numbers (NVIDIA datasheets print the 2:4-sparse figure, twice as
large, in bold; the book mixes the two). Prices are not datasheet numbers: they are the book's
assumed street prices (§3.7.8) and are kept only so that $/TFLOPS and $/GB can be computed.
A row describes one package as sold: GB200 and GH200 are superchips (Grace CPU + GPU dies).
"""
from __future__ import annotations

from dataclasses import dataclass

TERA = 1e12
GB = 1e9  # datasheets use decimal gigabytes and TB/s


@dataclass(frozen=True)
class GPUSpec:
    """One GPU's datasheet numbers (compute per precision, memory, bandwidth) with their source.

    定义于 第3章 §3.7.8
    """
    name: str
    arch: str
    year: int
    gpus: int                 # GPU dies per package (GB200 superchip = 2 B200)
    sms: int                  # streaming multiprocessors, whole package
    hbm_gb: float             # HBM capacity, decimal GB, whole package
    hbm_tbps: float           # HBM bandwidth, TB/s, whole package
    bf16_tflops: float        # dense BF16/FP16 Tensor Core
    fp8_tflops: float | None  # dense FP8 (None: not supported)
    fp4_tflops: float | None  # dense FP4 (None: not supported)
    tdp_w: float              # board / module power
    price_usd: float          # ASSUMPTION: the book's street price, not a datasheet number
    source: str
    fp32_tflops: float | None = None  # FP32 on the CUDA cores (no Tensor Cores), whole package

    @property
    def memory_bytes(self) -> float:
        return self.hbm_gb * GB

    @property
    def bandwidth(self) -> float:
        """Bytes/s."""
        return self.hbm_tbps * TERA

    def peak_flops(self, dtype: str = "bf16") -> float:
        """Dense FLOP/s for 'bf16'/'fp16', 'fp8' or 'fp4'; ValueError if the chip lacks it."""
        value = {"bf16": self.bf16_tflops, "fp16": self.bf16_tflops, "bfloat16": self.bf16_tflops,
                 "float16": self.bf16_tflops, "fp8": self.fp8_tflops, "fp4": self.fp4_tflops}.get(dtype, "?")
        if value == "?":
            raise ValueError(f"unknown dtype {dtype!r}; use bf16, fp16, fp8 or fp4")
        if value is None:
            raise ValueError(f"{self.name} has no {dtype} Tensor Cores")
        return value * TERA

    def ridge_point(self, dtype: str = "bf16") -> float:
        """FLOP per byte of HBM traffic at which this chip stops being memory-bound."""
        return self.peak_flops(dtype) / self.bandwidth

    @property
    def usd_per_bf16_tflops(self) -> float:
        return self.price_usd / self.bf16_tflops

    @property
    def usd_per_gb(self) -> float:
        return self.price_usd / self.hbm_gb


SPECS: dict[str, GPUSpec] = {s.name: s for s in [
    GPUSpec("A100", "Ampere", 2020, 1, 108, 80, 2.039, 312, None, None, 400, 12_000,
            "NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB): BF16 312 dense / 624 sparse TFLOPS, "
            "HBM2e 2,039 GB/s, FP32 19.5 TFLOPS, 400 W", fp32_tflops=19.5),
    GPUSpec("H100", "Hopper", 2022, 1, 132, 80, 3.35, 989, 1979, None, 700, 27_000,
            "NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 1,979 / FP8 3,958 TFLOPS with sparsity "
            "(halved here), FP32 67 TFLOPS (FP64 34), HBM3 3.35 TB/s, up to 700 W", fp32_tflops=67),
    GPUSpec("H200", "Hopper", 2024, 1, 132, 141, 4.8, 989, 1979, None, 700, 37_000,
            "NVIDIA H200 Tensor Core GPU datasheet (SXM): same compute as H100 SXM, HBM3e 141 GB at 4.8 TB/s, "
            "up to 700 W", fp32_tflops=67),
    GPUSpec("B200", "Blackwell", 2024, 1, 148, 180, 8.0, 2250, 4500, 9000, 1000, 45_000,
            "NVIDIA HGX B200 datasheet (per GPU): FP4 18 / FP8 9 / BF16 4.5 PFLOPS with sparsity (halved here), "
            "180 GB HBM3e at 8 TB/s, FP32 75 TFLOPS, 1,000 W", fp32_tflops=75),
    GPUSpec("GH200", "Hopper", 2023, 1, 132, 96, 4.0, 989, 1979, None, 1000, 55_000,
            "NVIDIA GH200 Grace Hopper Superchip datasheet: H100 compute, 96 GB HBM3 at 4 TB/s "
            "(144 GB HBM3e / 4.9 TB/s variant exists) + 480 GB LPDDR5X; module 450–1,000 W", fp32_tflops=67),
    GPUSpec("GB200", "Blackwell", 2024, 2, 296, 372, 16.0, 5000, 10000, 20000, 2700, 75_000,
            "NVIDIA GB200 NVL72 datasheet (per superchip, 1 Grace + 2 B200): FP4 40 / FP8 20 / BF16 10 "
            "PFLOPS with sparsity (halved here), FP32 2 x 80 TFLOPS, 372 GB HBM3e at 16 TB/s; ~2.7 kW per superchip",
            fp32_tflops=160),
]}


def get_spec(name: str) -> GPUSpec:
    """Spec of a GPU by name (case-insensitive).

    定义于 第3章 §3.7.8
    """
    for key, spec in SPECS.items():
        if key.lower() == name.lower():
            return spec
    raise ValueError(f"unknown GPU {name!r}; known: {', '.join(SPECS)}")


# Links between CPU and GPU (§3.2.5). PCIe Gen5: 32 GT/s per lane, 128b/130b encoding, 16 lanes, per
# direction. NVLink-C2C (Grace Hopper / Grace Blackwell): 900 GB/s total, i.e. 450 GB/s each way
# (NVIDIA's own comparison: "7x the bandwidth of PCIe Gen5").
PCIE_GEN5_X16_GBPS_PER_DIRECTION = 32e9 * 16 * 128 / 130 / 8 / GB   # ≈ 63.0 GB/s
NVLINK_C2C_GBPS_TOTAL = 900.0                                       # both directions together
NVLINK_C2C_GBPS_PER_DIRECTION = NVLINK_C2C_GBPS_TOTAL / 2
