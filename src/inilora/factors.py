"""Turn a model's target weights into initial factors: dispatch per method, batch the IniLoRA fit
over same-shape matrices in memory-bounded chunks, consult the fit cache, show progress. Pure torch;
no PEFT here."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .cache import FitCache, fit_key
from .config import InitOptions
from .memory import release_freed_memory
from .fit import AdamSchedule, draw_start, fit_adam, fit_svd, fit_svd_randomized
from .methods import (Factors, equalize_entry_scale, layer_generator, random_factors, random_orthogonal,
                      relative_tail_energy, rotate_basis, svd_factors)

logger = logging.getLogger("inilora")
AUTO_CHUNK_FRACTION = 0.05  # of the model's parameter bytes, for one chunk of fp32 weight copies
AUTO_CHUNK_CAP = 256 * 2**20


@dataclass
class Target:
    """One matrix to initialize: ``weight`` is an ``out × in`` view of the model's parameter."""

    name: str
    weight: Tensor
    r: int
    scaling: float
    fingerprint: str = ""
    dequantized: bool = False  # ``weight`` is a dequantized copy of a 4-bit layer's weight

    @property
    def module_name(self) -> str:
        """The last component of the module path (``q_proj``): the σ rule averages over these."""
        return self.name.rsplit(".", 1)[-1]


def fit_target(target: Target, options: InitOptions) -> Tensor:
    """What the IniLoRA fit approximates: ``W / s`` (so ``s·B0·A0 ≈ W``) or, as published, ``W``."""
    W = target.weight.float()
    return W / target.scaling if options.fit_scaled else W


def published_sigmas(targets: list[Target], options: InitOptions) -> dict[str, float]:
    """σ per module name: the mean, over all targeted matrices of that name, of each one's std."""
    stds = defaultdict(list)
    for t in targets:
        stds[t.module_name].append(float(fit_target(t, options).std()))
    return {name: sum(v) / len(v) for name, v in stds.items()}


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
    fields = {"solver": options.solver, "seed": options.seed, "fit_scaled": options.fit_scaled}
    if options.solver != "adam":
        fields["svd_basis"] = options.svd_basis
    if options.solver == "adam":
        fields.update(steps=options.steps, lr=options.lr, lr_decay=options.lr_decay,
                      lr_decay_every=options.lr_decay_every, early_stop_tol=options.early_stop_tol,
                      early_stop_every=options.early_stop_every, sigma=sigma)
    elif options.solver == "svd_randomized":
        fields.update(oversample=options.randomized_oversample, niter=options.randomized_niter)
    return fields


def _closed_form(t: Target, options: InitOptions) -> Factors:
    """The optimum, factored √S/√S, in the basis ``options.svd_basis`` asks for."""
    generator = layer_generator(options.seed, t.name)
    if options.solver == "svd":
        A0, B0, optimum = fit_svd(fit_target(t, options), t.r)
    else:
        A0, B0 = fit_svd_randomized(fit_target(t, options), t.r, options.randomized_oversample,
                                    options.randomized_niter, generator)
        optimum = None
    if options.svd_basis == "adam-like":
        A0, B0 = equalize_entry_scale(*rotate_basis(A0, B0, random_orthogonal(t.r, generator)))
    return Factors(A0, B0, optimum)


def _fit_chunk(chunk: list[Target], options: InitOptions, sigmas: dict[str, float]) -> list[Factors]:
    """Fit one chunk with the chosen solver; every matrix gets its own seeded draw."""
    if options.solver in ("svd", "svd_randomized"):
        return [_closed_form(t, options) for t in chunk]
    starts = [draw_start(tuple(t.weight.shape), t.r, sigmas[t.module_name], layer_generator(options.seed, t.name))
              for t in chunk]
    schedule = AdamSchedule(options.steps, options.lr, options.lr_decay, options.lr_decay_every,
                            options.early_stop_tol, options.early_stop_every)
    targets = torch.stack([fit_target(t, options) for t in chunk])
    A0, B0, _ = fit_adam(targets, torch.stack([s[0] for s in starts]), torch.stack([s[1] for s in starts]), schedule)
    # one matrix at a time: LAPACK's workspace stays one matrix, not a second copy of the chunk
    optima = [relative_tail_energy(torch.linalg.svdvals(target), t.r) for target, t in zip(targets, chunk)]
    del targets
    return [Factors(A0[i], B0[i], optima[i]) for i in range(len(chunk))]


def inilora_factors(targets: list[Target], options: InitOptions, bar: tqdm, model_bytes: int | None) -> dict[str, Factors]:
    """The IniLoRA fit of every target: cached entries are reused, the rest fitted chunk by chunk."""
    cache = FitCache(options.cache_dir) if options.cache else None
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
    for chunk in chunks([t for t in targets if t.name not in result], chunk_bytes(options, model_bytes)):
        for t, factors in zip(chunk, _fit_chunk(chunk, options, sigmas)):
            result[t.name] = factors
            if cache is not None:
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


def compute_factors(targets: list[Target], options: InitOptions, model_bytes: int | None = None) -> dict[str, Factors]:
    """Initial factors (fp32, on each weight's device) for every target, in the targets' order."""
    method = options.method
    result: dict[str, Factors] = {}
    bar = tqdm(total=len(targets), desc=f"{method} init", unit="matrix", disable=not options.progress)
    with torch.no_grad(), bar:
        if method == "inilora":
            result = inilora_factors(targets, options, bar, model_bytes)
        else:
            for t in targets:
                if method in ("pissa", "milora"):
                    result[t.name] = svd_factors(t.weight, t.r, t.scaling, smallest=method == "milora")
                else:
                    result[t.name] = random_factors(method, tuple(t.weight.shape), t.r,
                                                    layer_generator(options.seed, t.name))
                bar.update(1)
    return {t.name: result[t.name] for t in targets}
