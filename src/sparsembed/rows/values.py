"""The closed set of wire value types: how a row's values travel (fp32, fp16, bf16).

Each type carries its header code, its width in bytes (the one table of value widths) and its torch dtype. The
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

    @property
    def code(self) -> int:
        """The header's value-dtype byte."""
        return _CODES[self]

    @property
    def width(self) -> int:
        """Bytes per value on the wire."""
        return 4 if self is Values.FP32 else 2

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of a value on the wire."""
        import torch

        return {Values.FP32: torch.float32, Values.FP16: torch.float16, Values.BF16: torch.bfloat16}[self]


_CODES = {Values.FP32: 0, Values.FP16: 1, Values.BF16: 2}
