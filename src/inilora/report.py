"""The per-layer report of an initialization: how well ``s·B0·A0`` approximates ``W`` next to the
Eckart–Young optimum, and how far the initialized layer drifted from the base (rounding)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    r: int
    scaling: float
    init_error: float  # ‖W − s·B0·A0‖_F / ‖W‖_F, from the stored factors
    optimum: float | None  # Eckart–Young ‖W − W_r‖_F / ‖W‖_F, where computed
    drift: float  # ‖W_res + s·B0·A0 − W‖_F / ‖W‖_F with W_res as stored: 0 means exact
    max_abs_drift: float
    fitted_by_rank: int | None = None  # the torch.distributed rank that fitted it; None: cache or no fit
    quantized: str | None = None  # "nf4"/"fp4": the residual is 4-bit and drift is its quantization error
    quant_ratios: tuple[float, ...] = ()  # ‖deq(Q(W_res)) + s·B0A0 − W‖_F / ‖deq(Q(W)) − W‖_F, then per refit
    dequantized_base: bool = False  # the factors were fitted to a dequantized 4-bit weight (no ratio: W unknown)

    @property
    def quant_ratio(self) -> float | None:
        """The error ratio of the installed residual (1.0 is plain QLoRA's error; < 1 removes some of it)."""
        return self.quant_ratios[-1] if self.quant_ratios else None

    @property
    def ratio(self) -> float | None:
        """init_error / optimum: 1 means the fit reached the optimum."""
        if self.optimum is None:
            return None
        return self.init_error / self.optimum if self.optimum > 0 else (1.0 if self.init_error == 0 else float("inf"))


FIT_COLUMNS = ("init_error", "optimum", "ratio")  # blank where the method does not approximate W


@dataclass
class InitReport:
    """``print(report)``: one line; ``report.table()``: one row per layer. Columns that mean nothing for
    the method are blank (the fit's error and optimum for ``lora``, ``inilora-alpha``, ``inilora-beta``,
    whose factors do not approximate ``W``)."""

    method: str
    drift_warn_threshold: float
    layers: list[LayerReport] = field(default_factory=list)
    solver: str | None = None  # the IniLoRA fit's solver; None for methods without one
    approximates_weight: bool = True  # s·B0·A0 is meant to approximate W: the fit columns mean something
    seconds: float | None = None  # wall time of the initialization (or the reload)
    cache_hits: int | None = None  # layers whose factors came from the fit cache; None: no cache consulted

    @property
    def max_drift(self) -> float:
        return max((layer.drift for layer in self.layers), default=0.0)

    @property
    def max_ratio(self) -> float | None:
        ratios = [layer.ratio for layer in self.layers if layer.ratio is not None]
        return max(ratios) if ratios and self.approximates_weight else None

    @property
    def quant_ratio(self) -> float | None:
        """The 4-bit error ratio of the whole start: the mean over the targeted matrices of each one's
        :attr:`LayerReport.quant_ratio` (plain QLoRA: exactly 1), as results/quant_error.md averages it. None
        unless every layer has one (a full-precision residual, factors fitted to a dequantized base)."""
        ratios = [layer.quant_ratio for layer in self.layers]
        return sum(ratios) / len(ratios) if ratios and None not in ratios else None

    def drifting_layers(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.drift > self.drift_warn_threshold and not layer.quantized]

    def to_rows(self) -> list[dict]:
        rows = [{**asdict(layer), "ratio": layer.ratio, "quant_ratio": layer.quant_ratio} for layer in self.layers]
        if not self.approximates_weight:
            rows = [{**row, **dict.fromkeys(FIT_COLUMNS)} for row in rows]
        return rows

    def summary(self) -> str:
        """One line: method, solver, time, cache hits, worst drift, worst error/optimum."""
        parts = [f"{self.method}" + (f" ({self.solver})" if self.solver else "") + f": {len(self.layers)} layers"]
        if self.seconds is not None:
            parts.append(f"{self.seconds:.2f} s")
        if self.cache_hits is not None:
            parts.append(f"{self.cache_hits}/{len(self.layers)} from cache")
        parts.append(f"max drift {self.max_drift:.2e}")
        if self.max_ratio is not None:
            parts.append(f"max error/optimum {self.max_ratio:.6f}")
        quant = [layer.quant_ratio for layer in self.layers if layer.quant_ratio is not None]
        if quant:
            parts.append(f"4-bit error ratio ≤ {max(quant):.4f}")
        if any(layer.dequantized_base for layer in self.layers):
            parts.append("factors fitted to dequantized 4-bit weights")
        return ", ".join(parts)

    def table(self) -> str:
        """The summary line, then one row per layer."""
        def number(value: float | None, spec: str) -> str:
            return "" if value is None else format(value, spec)

        quantized = any(layer.quantized for layer in self.layers)
        header = ("layer", "shape", "r", "s", "init err", "optimum", "ratio", "drift", "max|drift|")
        header += ("4-bit", "q-error ratio") if quantized else ()
        rows = [header]
        fit = self.approximates_weight
        for layer in self.layers:
            row = (layer.name, "x".join(map(str, layer.shape)), str(layer.r), f"{layer.scaling:g}",
                   number(layer.init_error if fit else None, ".6f"), number(layer.optimum if fit else None, ".6f"),
                   number(layer.ratio if fit else None, ".6f"), f"{layer.drift:.2e}", f"{layer.max_abs_drift:.2e}")
            if quantized:
                ratios = " > ".join(f"{r:.4f}" for r in layer.quant_ratios)
                row += (f"{layer.quantized or ''}{' (dequantized base)' if layer.dequantized_base else ''}", ratios)
            rows.append(row)
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                 for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join([self.summary(), *lines])

    def __str__(self) -> str:
        return self.summary()
