"""Rank-k plain-LoRA factors of a trained update ``ΔW = s·L·R`` (truncated SVD, never forming ``ΔW``),
and the exported ``LoraConfig`` that gives every layer its new rank at its unchanged scaling."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from peft import LoraConfig
from peft.utils.other import get_pattern_key
from torch import Tensor

from .linalg import canonical_signs


class ExportTruncationWarning(UserWarning):
    """A rank-limited export differs from the trained update by more than the stated threshold."""


@dataclass(frozen=True)
class LowRank:
    """``B (out × k)``, ``A (k × in)`` with ``B·A`` the best rank-k approximation of ``L·R``, and its
    relative Frobenius error ``‖B·A − L·R‖ / ‖L·R‖`` (0 for a zero product)."""

    B: Tensor
    A: Tensor
    relative_error: float


def truncate(L: Tensor, R: Tensor, k: int) -> LowRank:
    """Best rank-k approximation (Eckart–Young) of ``L (out × m) · R (m × in)`` with m small: QR of
    both thin factors, then an SVD of the m × m core, all in float64; cost O((out + in)·m²)."""
    QL, RL = torch.linalg.qr(L.double())
    QR, RR = torch.linalg.qr(R.double().T)
    U, S, Vh = torch.linalg.svd(RL @ RR.T)
    k = min(k, S.numel())
    energy = S.square()
    total = float(energy.sum())
    error = math.sqrt(float(energy[k:].sum()) / total) if total > 0 else 0.0
    root = S[:k].sqrt()
    left, right = canonical_signs(QL @ U[:, :k], Vh[:k] @ QR.T)  # the triplets of L·R, in its orientation
    B = left * root
    A = root[:, None] * right
    return LowRank(B.to(L.dtype).contiguous(), A.to(R.dtype).contiguous(), error)


def layer_rank_and_alpha(config: LoraConfig, name: str) -> tuple[int, float]:
    """The rank and alpha PEFT gives the layer ``name`` under ``config`` (its pattern rules)."""
    r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), name), config.r)
    alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), name), config.lora_alpha)
    return r, alpha


def export_config(config: LoraConfig, ranks: dict[str, int]) -> LoraConfig:
    """A copy of ``config`` under which each layer ``name`` has rank ``ranks[name]`` and its old scaling
    (alpha/r, alpha/√r under rsLoRA). Patterns are rewritten rule by rule; a layer the rewritten rules
    still miss gets a rule of its own, put first so that it wins PEFT's first-match lookup."""
    def alpha_for(alpha: float, old_rank: int, new_rank: int) -> float:
        ratio = new_rank / old_rank
        return alpha * (math.sqrt(ratio) if config.use_rslora else ratio)

    def new_rank(old_rank: int) -> int:  # a rule's new rank: that of the layers it covers
        covered = {ranks[name] for name in ranks if layer_rank_and_alpha(config, name)[0] == old_rank}
        return max(covered, default=old_rank)

    out = copy.deepcopy(config)
    out.r = new_rank(config.r)
    out.lora_alpha = alpha_for(config.lora_alpha, config.r, out.r)
    out.rank_pattern = {key: new_rank(v) for key, v in config.rank_pattern.items()}
    out.alpha_pattern = {key: alpha_for(v, config.rank_pattern.get(key, config.r),
                                        out.rank_pattern.get(key, out.r))
                         for key, v in config.alpha_pattern.items()}
    for key, v in config.rank_pattern.items():
        if key not in config.alpha_pattern:
            out.alpha_pattern[key] = alpha_for(config.lora_alpha, v, out.rank_pattern[key])
    own_rank, own_alpha = {}, {}
    for name, rank in ranks.items():
        old_rank, old_alpha = layer_rank_and_alpha(config, name)
        wanted = alpha_for(old_alpha, old_rank, rank)
        got_rank, got_alpha = layer_rank_and_alpha(out, name)
        if got_rank != rank or not math.isclose(got_alpha, wanted, rel_tol=1e-12):
            own_rank[name], own_alpha[name] = rank, wanted
    out.rank_pattern = {**own_rank, **out.rank_pattern}
    out.alpha_pattern = {**own_alpha, **out.alpha_pattern}
    return out
