"""Turn a model's target weights into initial factors: dispatch per method, batch the IniLoRA fit
over same-shape matrices in memory-bounded chunks, show progress. Pure torch; no PEFT here."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .config import InitOptions
from .fit import AdamSchedule, draw_start, fit_adam, fit_svd, fit_svd_randomized
from .methods import Factors, layer_generator, random_factors, relative_tail_energy, svd_factors

logger = logging.getLogger("inilora")


@dataclass
class Target:
    """One matrix to initialize: ``weight`` is an ``out × in`` view of the model's parameter."""

    name: str
    weight: Tensor
    r: int
    scaling: float

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


def chunks(targets: list[Target], chunk_bytes: float) -> Iterator[list[Target]]:
    """Same-shape, same-rank groups, each holding at most ``chunk_bytes`` of fp32 weight copies
    (at least one matrix)."""
    groups = defaultdict(list)
    for t in targets:
        groups[(tuple(t.weight.shape), t.r, t.weight.device)].append(t)
    for (shape, _, _), group in groups.items():
        per_chunk = max(1, int(chunk_bytes // (shape[0] * shape[1] * 4)))
        for i in range(0, len(group), per_chunk):
            yield group[i : i + per_chunk]


def _inilora_chunk(chunk: list[Target], options: InitOptions, sigmas: dict[str, float]) -> list[Factors]:
    if options.solver != "adam":
        out = []
        for t in chunk:
            target = fit_target(t, options)
            if options.solver == "svd":
                A0, B0, optimum = fit_svd(target, t.r)
            else:
                A0, B0 = fit_svd_randomized(target, t.r, options.randomized_oversample,
                                            options.randomized_niter, layer_generator(options.seed, t.name))
                optimum = None
            out.append(Factors(A0, B0, optimum))
        return out
    targets = torch.stack([fit_target(t, options) for t in chunk])
    starts = [draw_start(tuple(t.weight.shape), t.r, sigmas[t.module_name], layer_generator(options.seed, t.name))
              for t in chunk]
    U = torch.stack([s[0] for s in starts])
    P = torch.stack([s[1] for s in starts])
    schedule = AdamSchedule(options.steps, options.lr, options.lr_decay, options.lr_decay_every,
                            options.early_stop_tol, options.early_stop_every)
    A0, B0, _ = fit_adam(targets, U, P, schedule)
    spectra = torch.linalg.svdvals(targets)
    return [Factors(A0[i], B0[i], relative_tail_energy(spectra[i], t.r)) for i, t in enumerate(chunk)]


def compute_factors(targets: list[Target], options: InitOptions) -> dict[str, Factors]:
    """Initial factors (fp32, on each weight's device) for every target, in the targets' order."""
    method = options.method
    result: dict[str, Factors] = {}
    bar = tqdm(total=len(targets), desc=f"{method} init", unit="matrix", disable=not options.progress)
    with torch.no_grad(), bar:
        if method == "inilora":
            sigmas = published_sigmas(targets, options) if options.solver == "adam" else {}
            for chunk in chunks(targets, options.chunk_mb * 2**20):
                for t, f in zip(chunk, _inilora_chunk(chunk, options, sigmas)):
                    result[t.name] = f
                bar.update(len(chunk))
        else:
            for t in targets:
                if method in ("pissa", "milora"):
                    f = svd_factors(t.weight, t.r, t.scaling, smallest=method == "milora")
                else:
                    f = random_factors(method, tuple(t.weight.shape), t.r, layer_generator(options.seed, t.name))
                result[t.name] = f
                bar.update(1)
    return {t.name: result[t.name] for t in targets}
