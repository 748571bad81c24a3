"""IniLoRA's fit as a method: the solver per chunk, batching over same-shape matrices in
memory-bounded chunks, the fit cache, a log line per matrix. Pure torch; no PEFT here."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import TYPE_CHECKING, Iterable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..cache import FitCache, fit_key
from ..distributed import agreed_todo, fit_chunks
from ..fit import draw_start, fit_adam, fit_svd, fit_svd_randomized_batch
from ..memory import release_freed_memory
from ..linalg import equalize_entry_scale, random_orthogonal, relative_tail_energy, rotate_basis
from .base import Factors, Method, Target, layer_generator

if TYPE_CHECKING:
    from ..options import InitOptions

logger = logging.getLogger("inilora")
AUTO_CHUNK_FRACTION = 0.05  # of the model's parameter bytes, for one chunk of fp32 weight copies
AUTO_CHUNK_CAP = 256 * 2**20


def fit_target(target: Target, options: InitOptions) -> Tensor:
    """What the IniLoRA fit approximates: ``W / s`` (so ``s·B0·A0 ≈ W``) or, as published, ``W``."""
    W = target.weight.float()
    return W / target.scaling if options.fit_scaled and target.scaling != 1 else W


def start_sigmas(targets: Iterable[Target], options: InitOptions) -> dict[str, float]:
    """σ per module name of the published start, a mean over all targets (read lazily, one at a time: a
    ZeRO-3 model's weights are gathered alone); {} without reading them when the solver draws no such start."""
    if options.solver != "adam":
        return {}
    return mean_by_module((t.module_name, fit_std(t, options)) for t in targets)


def fit_std(target: Target, options: InitOptions) -> float:
    return float(fit_target(target, options).std())


def mean_by_module(stds: Iterable[tuple[str, float]]) -> dict[str, float]:
    """σ per module name: the mean of the stds of that name's matrices."""
    by_name = defaultdict(list)
    for name, std in stds:
        by_name[name].append(std)
    return {name: sum(v) / len(v) for name, v in by_name.items()}


def published_sigmas(targets: list[Target], options: InitOptions) -> dict[str, float]:
    """σ per module name: the mean, over all targeted matrices of that name, of each one's std (fixed
    beforehand when the targets carry it)."""
    if all(t.sigma is not None for t in targets):
        return {t.module_name: t.sigma for t in targets}
    return mean_by_module((t.module_name, fit_std(t, options)) for t in targets)


def chunk_bytes(options: InitOptions, model_bytes: int | None) -> float:
    if options.chunk_mb is not None:
        return options.chunk_mb * 2**20
    if model_bytes is None:
        return AUTO_CHUNK_CAP
    return min(AUTO_CHUNK_CAP, AUTO_CHUNK_FRACTION * model_bytes)


def chunks(targets: list[Target], budget: float) -> Iterator[list[Target]]:
    """Same-shape, same-rank groups, each holding at most ``budget`` bytes of fp32 weight copies
    (at least one matrix)."""
    groups = defaultdict(list)
    for t in targets:
        groups[(tuple(t.weight.shape), t.r, t.weight.device)].append(t)
    for (shape, _, _), group in groups.items():
        per_chunk = max(1, int(budget // (shape[0] * shape[1] * 4)))
        for i in range(0, len(group), per_chunk):
            yield group[i : i + per_chunk]


def fit_error(target: Tensor, A0: Tensor, B0: Tensor) -> float:
    """‖T − B0·A0‖_F / ‖T‖_F without forming ``B0·A0`` (Gram form)."""
    energy = target.square().sum()
    cross = (B0 * (target @ A0.T)).sum()
    product = ((B0.T @ B0) * (A0 @ A0.T)).sum()
    return math.sqrt(max(float(energy - 2 * cross + product), 0.0) / max(float(energy), 1e-300))


def _fit_options(options: InitOptions, sigma: float | None) -> dict:
    """What the cache key hashes: the solver and its init version (an entry fitted by an older algorithm
    is not reused), the options every solver reads, and the solver's own settings (``asdict`` of its
    sub-config)."""
    # a solver never bumped keys its entries with None, as before versions existed (its factors are unchanged)
    fields = {"solver": options.solver, "version": INILORA.init_versions.get(options.solver), "seed": options.seed,
              "fit_scaled": options.fit_scaled, **options.solver_settings()}
    if options.solver == "adam":
        fields["sigma"] = sigma
    else:
        fields["svd_basis"] = options.svd_basis
    return fields


def _closed_form(t: Target, options: InitOptions, generator: torch.Generator,
                 randomized: tuple[Tensor, Tensor] | None = None) -> Factors:
    """The optimum, factored √S/√S, in the basis ``options.svd_basis`` asks for; ``randomized``: the factors
    svd_randomized made (with ``generator``, the layer's own, which then draws the basis)."""
    if randomized is None:
        A0, B0, optimum = fit_svd(fit_target(t, options), t.r)
    else:
        (A0, B0), optimum = randomized, None
    if options.svd_basis == "adam-like":
        A0, B0 = equalize_entry_scale(*rotate_basis(A0, B0, random_orthogonal(t.r, generator)))
    return Factors(A0, B0, optimum)


def _adam_chunk(chunk: list[Target], options: InitOptions, sigmas: dict[str, float]) -> list[Factors]:
    """The published fit, batched over the chunk; every matrix gets its own seeded draw."""
    starts = [draw_start(tuple(t.weight.shape), t.r, sigmas[t.module_name], layer_generator(options.seed, t.name))
              for t in chunk]
    targets = torch.stack([fit_target(t, options) for t in chunk])
    shape = "x".join(map(str, chunk[0].weight.shape))
    # the Adam fit's own bar of steps (with an ETA), under the bar of matrices that moves once per chunk
    with tqdm(total=options.adam.steps, desc=f"adam fit of {len(chunk)} {shape} matrices", unit="step",
              leave=False, disable=not options.progress) as steps_bar:
        A0, B0, _ = fit_adam(targets, torch.stack([s[0] for s in starts]), torch.stack([s[1] for s in starts]),
                             options.adam, on_step=steps_bar.update)
    # one matrix at a time: LAPACK's workspace stays one matrix, not a second copy of the chunk
    optima = [relative_tail_energy(torch.linalg.svdvals(target), t.r) for target, t in zip(targets, chunk)]
    del targets
    return [Factors(A0[i], B0[i], optima[i]) for i in range(len(chunk))]


def _closed_form_chunk(chunk: list[Target], options: InitOptions, sigmas: dict[str, float]) -> list[Factors]:
    """The closed form one matrix at a time; svd_randomized on the chunk (same shape and rank) at once."""
    generators = [layer_generator(options.seed, t.name) for t in chunk]
    if options.solver == "svd":
        return [_closed_form(t, options, g) for t, g in zip(chunk, generators)]
    targets = torch.stack([fit_target(t, options) for t in chunk]) if len(chunk) > 1 else fit_target(chunk[0], options)[None]
    A0, B0 = fit_svd_randomized_batch(targets, chunk[0].r, options.randomized.block, options.randomized.niter,
                                      generators, scratch=len(chunk) > 1)  # a stack is this chunk's own copy
    return [_closed_form(t, options, g, (A0[i], B0[i])) for i, (t, g) in enumerate(zip(chunk, generators))]


# solver -> how it fits one chunk; the names are options.SOLVERS
FIT_CHUNK = {"adam": _adam_chunk, "svd": _closed_form_chunk, "svd_randomized": _closed_form_chunk}


def _fit_chunk(chunk: list[Target], options: InitOptions, sigmas: dict[str, float]) -> list[Factors]:
    """Fit one chunk with the chosen solver."""
    return FIT_CHUNK[options.solver](chunk, options, sigmas)


def inilora_factors(targets: list[Target], options: InitOptions, bar: tqdm, model_bytes: int | None,
                    cache: FitCache | None) -> dict[str, Factors]:
    """The IniLoRA fit of every target: cached entries are reused, the rest fitted chunk by chunk."""
    sigmas = published_sigmas(targets, options) if options.solver == "adam" else {}
    keys, result = {}, {}
    for t in targets:
        if cache is not None:
            keys[t.name] = fit_key(t.fingerprint, t.name, t.r, t.scaling,
                                   _fit_options(options, sigmas.get(t.module_name)))
            cached = cache.load(keys[t.name], t.weight.shape[0], t.weight.shape[1], t.r)
            if cached is not None:
                result[t.name] = Factors(cached.A0.to(t.weight.device), cached.B0.to(t.weight.device), cached.optimum)
                _log_fit(t, options, result[t.name], "cache hit")
                bar.update(1)
    todo = agreed_todo([t for t in targets if t.name not in result], targets, options.shard_fit)
    fitted_chunks = fit_chunks(list(chunks(todo, chunk_bytes(options, model_bytes))),
                               lambda chunk: _fit_chunk(chunk, options, sigmas), options.shard_fit)
    for chunk, fitted, fitted_here in fitted_chunks:  # sharded over ranks when torch.distributed runs
        for t, factors in zip(chunk, fitted):
            result[t.name] = factors
            if cache is not None and fitted_here:
                cache.store(keys[t.name], factors)
            _log_fit(t, options, factors, "fitted")
        bar.update(len(chunk))
        release_freed_memory()
    return result


def _log_fit(t: Target, options: InitOptions, factors: Factors, how: str) -> None:
    if logger.isEnabledFor(logging.INFO):
        error = fit_error(fit_target(t, options), factors.A0.float(), factors.B0.float())
        optimum = "n/a" if factors.optimum is None else f"{factors.optimum:.6f}"
        logger.info("inilora fit %s: relative error %.6f, optimum %s (%s)", t.name, error, optimum, how)


# 2: inilora's closed forms factor the optimum adam-like; 3 (svd): top-r by subspace iteration, not eigh;
# 3 (svd_randomized): the same iteration from a seeded start, stopped at 1e-5 × the optimum (was Halko 64/6);
# 4 (both): each triplet's sign is canonical (linalg.canonical_signs) before the seeded rotation, not LAPACK's
# 5 (both): Ritz pairs from the block's Gram matrix, and a cost model choosing iteration or eigendecomposition
# 6 (svd_randomized): block Krylov in blocks of min(r, 16), batched over same-shape matrices, fp32, stopped at
#   5e-5 × the optimum (estimated; was subspace iteration on r + 32 columns to 1e-5)
# 6 (svd): the iteration in fp64, or the fp32 Gram eigendecomposition refined by one fp64 step, so that nearly
#   equal σ_r ≈ σ_{r+1} split the same way at any thread count (MiniLM, 1 vs 2 threads: products 8e-4 → 3e-7)
# 7 (svd_randomized): where the cost model picks the eigendecomposition, it is refined in fp64 as the closed form's
# 8 (svd_randomized): the Krylov stop assumes its convergence may slow to the square root of the rate seen (SmolLM2
#   q/v r = 8 had stopped at up to 1.6e-4 × the optimum; now ≤ 5.1e-5 over 150 SmolLM2 and 31 MiniLM matrices, r 8–64)
INILORA = Method("inilora", residual=True, rank_limited=True, best_rank_r=True, compute=inilora_factors,
                 solvers=tuple(FIT_CHUNK), start_sigmas=start_sigmas,
                 init_versions={"svd": 6, "svd_randomized": 8})
