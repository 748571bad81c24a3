"""The public API next to PEFT's: positional order, init_options, returned paths, the report's summary and
table, and a progress bar that moves during a long Adam fit."""

import dataclasses

import pytest
import torch
from peft import LoraConfig

import inilora
import inilora.methods.inilora as inilora_fit
from conftest import tiny_model
from inilora.fit import fit_adam
from inilora.options import AdamSchedule

FAST = {"steps": 50, "progress": False}


def config(r=4):
    return LoraConfig(r=r, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def factors_of(peft_model):
    return {name: (layer.A0, layer.B0) for name, layer in peft_model.inilora.layers.items()}


def test_third_positional_is_the_adapter_name_as_in_peft():
    peft_model = inilora.get_peft_model(tiny_model("llama"), config(), "task1", method="pissa", progress=False)
    assert peft_model.inilora.adapter_name == "task1" and "task1" in peft_model.peft_config
    assert peft_model.inilora.options.method == "pissa"
    default = inilora.get_peft_model(tiny_model("llama"), config(), "task1", **FAST)
    assert default.inilora.options.method == "inilora"


def test_a_method_name_in_the_adapter_slot_is_taken_as_method_with_a_warning():
    with pytest.warns(FutureWarning, match="method='pissa'"):
        peft_model = inilora.get_peft_model(tiny_model("llama"), config(), "pissa", progress=False)
    assert peft_model.inilora.options.method == "pissa" and peft_model.inilora.adapter_name == "default"


def test_init_options_give_the_same_factors_as_keywords():
    options = inilora.InitOptions(method="inilora", solver="svd", seed=3, progress=False)
    given = inilora.get_peft_model(tiny_model("llama"), config(), init_options=options)
    keywords = inilora.get_peft_model(tiny_model("llama"), config(), method="inilora", solver="svd", seed=3,
                                      progress=False)
    assert given.inilora.options == options
    for name, (A0, B0) in factors_of(given).items():
        assert torch.equal(A0, factors_of(keywords)[name][0]) and torch.equal(B0, factors_of(keywords)[name][1])


@pytest.mark.parametrize("kwargs, message", [
    ({"init_options": inilora.InitOptions(progress=False), "seed": 1}, "not both"),
    ({"init_options": inilora.InitOptions(progress=False), "method": "pissa"}, "contradicts"),
    ({"init_options": {"seed": 1}}, "must be an inilora.InitOptions"),
])
def test_init_options_conflicts_are_refused_before_the_model_changes(kwargs, message):
    model = tiny_model("llama")
    with pytest.raises(inilora.InitError, match=message):
        inilora.get_peft_model(model, config(), **kwargs)
    assert not hasattr(model, "peft_config")


def test_save_and_export_return_the_directory_written(tmp_path):
    peft_model = inilora.get_peft_model(tiny_model("llama"), config(), "task1", method="pissa", progress=False)
    saved = inilora.save_pretrained(peft_model, tmp_path / "adapter")
    assert saved == tmp_path / "adapter" / "task1" and (saved / "inilora_init.safetensors").is_file()
    exported = inilora.export_lora(peft_model, tmp_path / "plain")
    assert exported == tmp_path / "plain" and (exported / "adapter_model.safetensors").is_file()


def test_summary_is_one_line_and_the_table_has_every_layer():
    report = inilora.get_peft_model(tiny_model("llama"), config(), method="inilora", solver="svd",
                                    progress=False).inilora.report
    line = str(report)
    assert "\n" not in line and line.startswith("inilora (svd): 4 layers")
    assert f"max drift {report.max_drift:.2e}" in line and f"max error/optimum {report.max_ratio:.6f}" in line
    assert report.seconds is not None and 0 < report.seconds < 60 and f"{report.seconds:.2f} s" in line
    assert "0/4 from cache" in line
    table = report.table().splitlines()
    assert table[0] == line and len(table) == 3 + 4  # summary, header, rule, one row per layer
    assert all(f"{layer.init_error:.6f}" in row for layer, row in zip(report.layers, table[3:]))


@pytest.mark.parametrize("method", ["lora", "inilora-alpha", "inilora-beta"])
def test_fit_columns_are_blank_where_they_mean_nothing(method):
    report = inilora.get_peft_model(tiny_model("llama"), config(), method=method, progress=False).inilora.report
    assert report.solver is None and report.cache_hits is None and report.max_ratio is None
    assert str(report) == f"{method}: 4 layers, {report.seconds:.2f} s, max drift {report.max_drift:.2e}"
    header, _, *rows = report.table().splitlines()[1:]
    for row in rows:  # cells are right-aligned under their header, so a blank column is blank there
        for column in ("init err", "optimum", "ratio"):
            assert row[header.index(column):header.index(column) + len(column)].strip() == ""
        assert row[header.index("drift"):header.index("drift") + len("drift")].strip() != ""
    assert all(row["init_error"] is None and row["optimum"] is None for row in report.to_rows())
    pissa = inilora.get_peft_model(tiny_model("llama"), config(), method="pissa", progress=False).inilora.report
    assert pissa.max_ratio == pytest.approx(1, abs=1e-4) and "max error/optimum" in str(pissa)


def test_report_counts_the_cache_hits():
    first = inilora.get_peft_model(tiny_model("llama"), config(), method="inilora", **FAST).inilora.report
    second = inilora.get_peft_model(tiny_model("llama"), config(), method="inilora", **FAST).inilora.report
    assert (first.cache_hits, second.cache_hits) == (0, 4)
    assert "4/4 from cache" in str(second) and second.solver == "adam"
    uncached = inilora.get_peft_model(tiny_model("llama"), config(), method="inilora", cache=False, **FAST)
    assert uncached.inilora.report.cache_hits is None


def test_adam_fit_calls_back_after_every_step():
    W = torch.randn(2, 12, 10, generator=torch.Generator().manual_seed(0))
    U, P = torch.randn(2, 12, 3) * 0.1, torch.randn(2, 10, 3) * 0.1
    calls = []
    A0, B0, steps = fit_adam(W, U, P, AdamSchedule(steps=37), on_step=lambda: calls.append(1))
    assert steps == 37 and len(calls) == 37
    A0_silent, _, _ = fit_adam(W, U, P, AdamSchedule(steps=37))
    assert torch.equal(A0, A0_silent)  # the callback does not change the fit
    calls.clear()
    _, _, stopped = fit_adam(W, U, P, AdamSchedule(steps=5000, early_stop_tol=0.5, early_stop_every=10),
                             on_step=lambda: calls.append(1))
    assert stopped < 5000 and len(calls) == stopped - 1  # the step that stops takes no update


def test_progress_bar_counts_adam_steps_within_a_chunk(monkeypatch):
    bars = []

    class RecordingBar(inilora_fit.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})
            self.unit_asked, self.total_asked, self.updates = kwargs.get("unit"), kwargs.get("total"), 0
            bars.append(self)

        def update(self, n=1):
            self.updates += n
            return super().update(n)

    monkeypatch.setattr(inilora_fit, "tqdm", RecordingBar)  # the bar of Adam steps
    monkeypatch.setattr(inilora.methods, "tqdm", RecordingBar)  # the bar of matrices
    inilora.get_peft_model(tiny_model("llama"), config(), method="inilora", steps=40, progress=True, cache=False,
                           chunk_mb=1)
    step_bars = [bar for bar in bars if bar.unit_asked == "step"]
    # q_proj (64x64) and v_proj (32x64): two shapes, each one chunk of 1 MiB or less, one bar of steps each
    assert len(step_bars) == 2 and all(bar.total_asked == 40 and bar.updates == 40 for bar in step_bars)
    matrices = [bar for bar in bars if bar.unit_asked == "matrix"]
    assert len(matrices) == 1 and matrices[0].updates == 4


def test_report_fields_survive_a_reload(tmp_path):
    peft_model = inilora.get_peft_model(tiny_model("llama"), config(), method="inilora", solver="svd", progress=False)
    inilora.save_pretrained(peft_model, tmp_path)
    report = inilora.from_pretrained(tiny_model("llama"), tmp_path).inilora.report
    assert report.solver == "svd" and report.cache_hits is None and report.seconds > 0
    assert dataclasses.asdict(report)["layers"][0]["optimum"] == peft_model.inilora.report.layers[0].optimum
