"""The IDX format (LeCun's MNIST files, also Fashion-MNIST's): a big-endian header, then the array.

Header: two zero bytes, a type byte (0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64), the number of dimensions, then one big-endian uint32 per dimension. A file may be gzip-compressed
(recognised by its magic bytes, not its name). Everything that does not fit (magic, type, a size that disagrees
with the header) is one line naming the file."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Tuple, Union

import numpy as np

from ..config import DataError

__all__ = ["IDX_TYPES", "read_idx_bytes", "parse_idx"]

IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
GZIP_MAGIC = b"\x1f\x8b"


def read_idx_bytes(path: Union[str, Path]) -> bytes:
    """The file's IDX bytes, decompressed when it is gzip: a gzip stream cut short or corrupt is one line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: not a complete gzip file ({type(e).__name__}: {e})") from None
    return data


def parse_idx(data: bytes, path: Union[str, Path]) -> np.ndarray:
    """The array the IDX bytes ``data`` (read from ``path``, named in errors) hold, in native byte order."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (magic number {data[:4].hex() or 'missing'})")
    dtype = IDX_TYPES.get(data[2])
    if dtype is None:
        raise DataError(f"{path}: not an IDX file (unknown type byte 0x{data[2]:02x})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path}: IDX header cut short ({len(data)} bytes for {ndim} dimensions)")
    shape: Tuple[int, ...] = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    want = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != want:
        raise DataError(f"{path}: {len(data)} bytes where its IDX header {list(shape)} says {want} "
                        f"({'truncated' if len(data) < want else 'trailing bytes'})")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
