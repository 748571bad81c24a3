"""DeepSpeed ZeRO-3: a partitioned target weight is gathered alone, only while it is read or written,
never the whole model. DeepSpeed is imported only when a weight is partitioned.

Every gather is a collective: every rank walks the same targets in the same order. A weight is gathered
once while it is checked (``collect_targets``), once while its factors are computed, and once while its
residual is written (``modifier_rank=0``: rank 0's residual is what DeepSpeed partitions again; every
rank writes the same one, from the same factors). The published Adam fit's σ, a mean over all targets,
takes one more pass before the fits.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING, Iterator

from torch import Tensor, nn

from .errors import InitError
from .layouts import weight_view
from .methods import compute_factors

if TYPE_CHECKING:
    from .cache import FitCache
    from .matrices import Factors, Target
    from .methods import Method
    from .options import InitOptions


def is_partitioned(weight) -> bool:
    """A parameter DeepSpeed ZeRO-3 partitioned (it has a ``ds_id``) of which this rank holds a part only."""
    return isinstance(weight, Tensor) and hasattr(weight, "ds_id") and weight.numel() < getattr(weight, "ds_numel", 0)


@contextlib.contextmanager
def gathered(module: nn.Module, modify: bool = False) -> Iterator[None]:
    """``module.weight`` whole on every rank inside the block, partitioned again after it. With ``modify``
    rank 0's writes are kept (broadcast, then partitioned). A weight that is not partitioned: no-op."""
    weight = getattr(module, "weight", None)
    if not is_partitioned(weight):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters([weight], modifier_rank=0 if modify else None):
        yield


def partitioned_names(model: nn.Module, targets: list[Target]) -> set[str]:
    """The targets whose weight is partitioned."""
    return {t.name for t in targets if not t.layer and (t.layout is None or not t.layout.is_param)
            and is_partitioned(model.get_submodule(t.name).weight)}


def refuse_unsupported(names: set[str], options: InitOptions, targets: list[Target]) -> None:
    """What a partitioned weight cannot take: a replacement parameter (4-bit, fp32 residual of a bf16/fp16
    weight), which DeepSpeed would not partition. Raised before anything is gathered for the fit."""
    first = next(t for t in targets if t.name in names)
    if options.quantize is not None:
        raise InitError(f"Layer {first.name!r} is partitioned by DeepSpeed ZeRO-3; quantize={options.quantize!r} "
                        "would replace it by a 4-bit layer DeepSpeed does not partition. Initialize without "
                        "ZeRO-3 (`inilora init`) to make a 4-bit residual.")
    low = [t for t in targets if t.name in names and t.weight.dtype.itemsize < 4]
    if options.residual_fp32 and low:
        raise InitError(f"Layer {low[0].name!r} is a {low[0].weight.dtype} weight partitioned by DeepSpeed ZeRO-3; "
                        "residual_fp32=True would replace it by an fp32 parameter DeepSpeed does not partition. "
                        "Load the model in float32 under ZeRO-3, or pass residual_fp32=False.")


@contextlib.contextmanager
def whole_target(model: nn.Module, target: Target) -> Iterator[Target]:
    """``target`` with its weight gathered, as a fresh ``out × in`` view (for the block only)."""
    module = model.get_submodule(target.name)
    with gathered(module):
        yield replace(target, weight=weight_view(module))


def _one_at_a_time(model: nn.Module, targets: list[Target]) -> Iterator[Target]:
    """Each target whole, gathered while the caller reads it (until the next one is asked for)."""
    for t in targets:
        with whole_target(model, t) as whole:
            yield whole


def factors_one_at_a_time(model: nn.Module, method: Method, targets: list[Target], options: InitOptions,
                          cache: FitCache | None) -> dict[str, Factors]:
    """Every target's factors by ``method``, each computed while its weight alone is gathered. Under a process group
    the IniLoRA fit of each is done by one rank and broadcast (``fit_chunks``), as for a whole model."""
    from tqdm.auto import tqdm

    # σ of every fit's start where it is a mean over all targets of one module name: one more pass
    sigmas = method.start_sigmas(_one_at_a_time(model, targets), options) if method.start_sigmas else {}
    if sigmas:
        for t in targets:
            t.sigma = sigmas[t.module_name]
    factors = {}
    with tqdm(total=len(targets), desc=f"{method.name} init (ZeRO-3, one weight at a time)", unit="matrix",
              disable=not options.progress) as bar:
        for t in targets:
            with whole_target(model, t) as whole:
                factors.update(compute_factors(method, [whole], options, cache=cache, bar=bar))
    return factors
