"""The methods that do not look at ``W``: plain LoRA, IniLoRA-α and IniLoRA-β (seeded per layer)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import Factors, Method, per_matrix, layer_generator

ALPHA_STD = 0.5


def lora_factors(out_features: int, in_features: int, r: int, generator: torch.Generator) -> Factors:
    """PEFT's default: A0 Kaiming-uniform (a=√5), B0 = 0."""
    A0 = torch.empty(r, in_features)
    nn.init.kaiming_uniform_(A0, a=math.sqrt(5), generator=generator)
    return Factors(A0, torch.zeros(out_features, r))


def alpha_factors(out_features: int, in_features: int, r: int, generator: torch.Generator) -> Factors:
    """IniLoRA-α: both factors i.i.d. N(0, 0.5²)."""
    B0 = torch.randn(out_features, r, generator=generator) * ALPHA_STD
    A0 = torch.randn(r, in_features, generator=generator) * ALPHA_STD
    return Factors(A0, B0)


def beta_factors(out_features: int, in_features: int, r: int, generator: torch.Generator) -> Factors:
    """IniLoRA-β: Kaiming-normal (fan_in, gain √2): std √(2/in) for A0, √(2/r) for B0."""
    B0 = torch.empty(out_features, r)
    A0 = torch.empty(r, in_features)
    nn.init.kaiming_normal_(B0, mode="fan_in", nonlinearity="relu", generator=generator)
    nn.init.kaiming_normal_(A0, mode="fan_in", nonlinearity="relu", generator=generator)
    return Factors(A0, B0)


def _drawn(draw):
    """A method drawing from the layer's own generator, for the weight's shape."""
    return per_matrix(lambda t, options: draw(t.weight.shape[0], t.weight.shape[1], t.r,
                                              layer_generator(options.seed, t.name)))


LORA = Method("lora", residual=False, rank_limited=False, compute=_drawn(lora_factors))
INILORA_ALPHA = Method("inilora-alpha", residual=True, rank_limited=False, compute=_drawn(alpha_factors))
INILORA_BETA = Method("inilora-beta", residual=True, rank_limited=False, compute=_drawn(beta_factors))
