"""A GGUF file read by hand: header, metadata, tensor table, and Q4_1 blocks decoded in PyTorch.

GGUF (llama.cpp's format), little-endian:
    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv × (key: string, type: u32, value)          string = u64 length + UTF-8 bytes
    n_tensors × (name: string, n_dims u32, dims u64 × n_dims (innermost first), type u32, offset u64)
    padding to `general.alignment` (32 by default), then the tensor data (offsets are relative to it).

Q4_1 (ggml type 3) stores 32 weights per 20-byte block: d (fp16 scale), m (fp16 minimum), then 16
bytes of 4-bit codes: byte j holds weight j in its low nibble and weight j+16 in its high nibble.
Weight = d·code + m (asymmetric, 5 bits per weight including the block header).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

GGML_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 10: "Q2_K",
                   11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 30: "BF16"}
Q4_1_BLOCK, Q4_1_BYTES = 32, 20
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass
class TensorInfo:
    """One entry of a GGUF tensor table: name, shape, ggml type and file offset.

    定义于 第8章 §8.4
    """
    name: str
    shape: tuple[int, ...]   # numpy/PyTorch order (outermost first)
    ggml_type: int
    offset: int              # absolute offset of the first byte in the file

    @property
    def type_name(self) -> str:
        return GGML_TYPE_NAMES.get(self.ggml_type, str(self.ggml_type))

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


class _Cursor:
    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0

    def unpack(self, fmt: str):
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        text = bytes(self.data[self.pos: self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return text

    def value(self, vtype: int):
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            item_type, count = self.unpack("<I"), self.unpack("<Q")
            return [self.value(item_type) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {vtype} at byte {self.pos}")


class GGUFFile:
    """Metadata and tensor table of a GGUF file (the data is memory-mapped, read on demand).

    定义于 第8章 §8.4
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._raw = np.memmap(self.path, dtype=np.uint8, mode="r")
        cur = _Cursor(memoryview(self._raw))
        if bytes(self._raw[:4]) != b"GGUF":
            raise ValueError(f"{self.path} is not a GGUF file (magic {bytes(self._raw[:4])!r})")
        cur.pos = 4
        self.version = cur.unpack("<I")
        if self.version < 2:
            raise ValueError(f"GGUF version {self.version} is not supported (need 2 or 3)")
        n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
        self.metadata: dict[str, object] = {}
        for _ in range(n_kv):
            key = cur.string()
            self.metadata[key] = cur.value(cur.unpack("<I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            dims = [cur.unpack("<Q") for _ in range(cur.unpack("<I"))]
            ggml_type, offset = cur.unpack("<I"), cur.unpack("<Q")
            infos.append((name, tuple(reversed(dims)), ggml_type, offset))
        align = int(self.metadata.get("general.alignment", 32))
        self.data_start = -(-cur.pos // align) * align
        self.tensors = {name: TensorInfo(name, shape, t, self.data_start + off) for name, shape, t, off in infos}

    def raw_bytes(self, name: str) -> np.ndarray:
        info = self.tensors[name]
        if info.ggml_type != 3:
            raise ValueError(f"{name} is {info.type_name}; this reader decodes Q4_1 only")
        nbytes = info.numel // Q4_1_BLOCK * Q4_1_BYTES
        return self._raw[info.offset: info.offset + nbytes]

    def dequantize(self, name: str) -> torch.Tensor:
        """The tensor as float32, decoded block by block from its Q4_1 bytes."""
        info = self.tensors[name]
        return dequantize_q4_1(torch.from_numpy(np.array(self.raw_bytes(name))), info.shape)


def dequantize_q4_1(raw: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """raw uint8 bytes of n/32 Q4_1 blocks -> float32 tensor of `shape`.

    定义于 第8章 §8.4
    """
    numel = int(np.prod(shape))
    if numel % Q4_1_BLOCK or raw.numel() != numel // Q4_1_BLOCK * Q4_1_BYTES:
        raise ValueError(f"{raw.numel()} bytes do not hold {numel} Q4_1 weights")
    blocks = raw.reshape(-1, Q4_1_BYTES)
    d = blocks[:, 0:2].contiguous().view(torch.float16).float()        # [n, 1]
    m = blocks[:, 2:4].contiguous().view(torch.float16).float()
    qs = blocks[:, 4:]
    codes = torch.cat([qs & 0xF, qs >> 4], dim=1).float()           # weights 0..15 then 16..31
    return (codes * d + m).reshape(shape)


def encode_q4_1(x: torch.Tensor) -> torch.Tensor:
    """The inverse direction (llama.cpp's reference quantizer): d = (max − min)/15, m = min, code = round((x − m)/d).

    定义于 第8章 §8.4
    """
    if x.numel() % Q4_1_BLOCK:
        raise ValueError(f"{x.numel()} values do not split into blocks of {Q4_1_BLOCK}")
    blocks = x.float().reshape(-1, Q4_1_BLOCK)
    lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    d = (hi - lo) / 15
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    codes = torch.clamp(torch.round((blocks - lo) * inv), 0, 15).to(torch.uint8)
    packed = codes[:, :16] | (codes[:, 16:] << 4)
    header = torch.cat([d.half().view(torch.uint8), lo.half().view(torch.uint8)], dim=1)
    return torch.cat([header, packed], dim=1).flatten()
