"""The closed set of wire value types: how a row's values travel (fp32, fp16, bf16, int8).

Each type carries its header code, its width in bytes (the one table of value widths), a row's bytes on the wire
(int8 rows carry a float32 scale each, see :mod:`sparsembed.rows.quantize`) and its torch dtype. The
module imports no torch (the dtype is looked up on use), so the command line can list the choices without
loading it.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["Values"]


class Values(str, Enum):
    """A wire value type; compares equal to its name (``Values.FP16 == "fp16"``)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"

    @property
    def code(self) -> int:
        """The header's value-dtype byte."""
        return _CODES[self]

    @property
    def width(self) -> int:
        """Bytes per value on the wire."""
        return {Values.FP32: 4, Values.INT8: 1}.get(self, 2)

    def row_bytes(self, dim: int) -> int:
        """Bytes of one row of ``dim`` values on the wire: its values, and for int8 its float32 scale."""
        return dim * self.width + (4 if self is Values.INT8 else 0)

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of a value on the wire."""
        import torch

        return {Values.FP32: torch.float32, Values.FP16: torch.float16, Values.BF16: torch.bfloat16,
                Values.INT8: torch.int8}[self]


_CODES = {Values.FP32: 0, Values.FP16: 1, Values.BF16: 2, Values.INT8: 3}
