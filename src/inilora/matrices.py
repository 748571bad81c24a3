"""One matrix to initialize and its initial factors: plain data, shared by the methods, the fit cache,
the sharded fit and the quantized residuals (a module of its own so none of them imports another)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .layouts import Layout


@dataclass
class Factors:
    """Initial factors of one matrix. ``optimum`` is the Eckart–Young relative error
    ``‖W − W_r‖_F / ‖W‖_F`` when the method computed the spectrum anyway, else None."""

    A0: Tensor
    B0: Tensor
    optimum: float | None = None
    fitted_by_rank: int | None = None  # the torch.distributed rank that fitted it (None: not fitted here)


@dataclass
class Target:
    """One matrix to initialize: ``weight`` is an ``out × in`` view of the model's parameter (a ZeRO-3
    partitioned parameter itself, whole only while gathered: :mod:`inilora.zero3`)."""

    name: str
    weight: Tensor
    r: int
    scaling: float
    fingerprint: str = ""
    dequantized: bool = False  # ``weight`` is a dequantized copy of a 4-bit layer's weight
    # σ of the published Adam start when fixed before the fit, from targets it does not see (a ZeRO-3
    # model's weights are fitted one at a time); None: computed from the targets being fitted
    sigma: float | None = None
    layout: Layout | None = None  # how the matrix sits in the layer's weight (None: nn.Linear)
    layer: str = ""  # the PEFT layer's key when it holds several matrices (an expert parameter); "": ``name``
    nonzero: bool | None = None  # True: the weight has a non-zero entry (its sum is non-zero); None: not known

    @property
    def module_name(self) -> str:
        """The last component of the module path (``q_proj``; an expert parameter's name, ``gate_up_proj``):
        the σ rule averages over these."""
        return (self.layer or self.name).rsplit(".", 1)[-1]
