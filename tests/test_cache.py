import logging
import os

import pytest
import torch
from peft import LoraConfig

import inilora
import inilora.methods.inilora
from inilora.cache import FitCache, default_cache_dir
from conftest import tiny_model

OPTS = {"steps": 200, "progress": False}


def init_factors(**options):
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    peft_model = inilora.get_peft_model(tiny_model("llama"), cfg, method="inilora", **{**OPTS, **options})
    return {name: (layer.A0, layer.B0) for name, layer in peft_model.inilora.layers.items()}


@pytest.fixture
def fit_calls(monkeypatch):
    calls = []
    original = inilora.methods.inilora._fit_chunk

    def counting(chunk, *args):
        calls.extend(t.name for t in chunk)
        return original(chunk, *args)

    monkeypatch.setattr(inilora.methods.inilora, "_fit_chunk", counting)
    return calls


def entries():
    return sorted(default_cache_dir().glob("*.safetensors"))


def test_second_init_is_a_cache_hit_with_identical_factors(fit_calls):
    first = init_factors()
    assert len(fit_calls) == 4 and len(entries()) == 4
    second = init_factors()
    assert len(fit_calls) == 4  # nothing refitted
    for name in first:
        assert torch.equal(first[name][0], second[name][0]) and torch.equal(first[name][1], second[name][1])


def test_changed_options_rank_or_weights_miss(fit_calls):
    init_factors()
    init_factors(steps=201)
    init_factors(seed=1)
    init_factors(fit_scaled=False)
    assert len(fit_calls) == 16 and len(entries()) == 16


def test_cache_can_be_disabled_or_moved(fit_calls, tmp_path):
    init_factors(cache=False)
    assert entries() == []
    init_factors(cache_dir=str(tmp_path / "elsewhere"))
    assert len(list((tmp_path / "elsewhere").glob("*.safetensors"))) == 4 and entries() == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_entry_is_detected_and_refitted(damage, fit_calls, caplog):
    first = init_factors()
    victim = entries()[0]
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[-3] ^= 0x55
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"not a safetensors file")
    victim.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="inilora"):
        again = init_factors()
    assert len(fit_calls) == 5  # exactly the damaged entry was refitted
    assert "corrupted" in caplog.text or "unreadable" in caplog.text
    for name in first:
        assert torch.equal(first[name][0], again[name][0])
    assert len(entries()) == 4


def test_a_write_failing_midway_leaves_no_entry_and_the_next_init_refits(fit_calls, monkeypatch, caplog):
    import inilora.cache

    def half_then_disk_full(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError(28, "No space left on device")
    real_save_file = inilora.cache.save_file
    with monkeypatch.context() as patch:
        patch.setattr(inilora.cache, "save_file", half_then_disk_full)
        with caplog.at_level(logging.WARNING, logger="inilora"):
            first = init_factors()  # the fit stands; only caching failed
    assert "could not write" in caplog.text
    assert os.listdir(default_cache_dir()) == []  # no entry, no temp file
    again = init_factors()
    assert len(fit_calls) == 8 and len(entries()) == 4  # refitted, now cached
    for name in first:
        assert torch.equal(first[name][0], again[name][0]) and torch.equal(first[name][1], again[name][1])


def _init_in_a_process(cache_dir, start, out):
    torch.set_num_threads(1)  # two processes on a shared machine
    start.wait()  # both processes begin the fit together
    factors = init_factors(cache_dir=cache_dir)
    torch.save({name: (A0, B0) for name, (A0, B0) in factors.items()}, out)


def test_two_processes_sharing_a_cache_dir_agree(tmp_path, fit_calls):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    outs = [tmp_path / f"factors{i}.pt" for i in range(2)]
    workers = [context.Process(target=_init_in_a_process, args=(str(tmp_path / "shared"), start, out)) for out in outs]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0]
    first, second = (torch.load(out) for out in outs)
    assert first.keys() == second.keys() and len(first) == 4
    for name in first:
        assert torch.equal(first[name][0], second[name][0]) and torch.equal(first[name][1], second[name][1])
    files = os.listdir(tmp_path / "shared")
    assert len(files) == 4 and all(f.endswith(".safetensors") for f in files)
    # every entry is whole: a third init is all cache hits with the same factors
    third = init_factors(cache_dir=str(tmp_path / "shared"))
    assert fit_calls == []
    for name in first:
        assert torch.equal(first[name][0], third[name][0]) and torch.equal(first[name][1], third[name][1])


def test_mismatched_entry_is_a_miss(tmp_path):
    cache = FitCache(tmp_path)
    from inilora.methods import Factors
    cache.store("k1", Factors(torch.ones(4, 8), torch.ones(6, 4), 0.5))
    assert cache.load("k1", 6, 8, 4).optimum == 0.5
    (tmp_path / "k1.safetensors").rename(tmp_path / "k2.safetensors")
    assert cache.load("k2", 6, 8, 4) is None  # the key recorded inside differs
    assert cache.load("k1", 6, 8, 4) is None and cache.corrupt == 1 and cache.misses == 2


def test_one_log_line_per_matrix_with_error_and_optimum(caplog):
    with caplog.at_level(logging.INFO, logger="inilora"):
        init_factors()
        init_factors()
    fitted = [r.getMessage() for r in caplog.records if "(fitted)" in r.getMessage()]
    hits = [r.getMessage() for r in caplog.records if "(cache hit)" in r.getMessage()]
    assert len(fitted) == 4 and len(hits) == 4
    assert all("relative error" in m and "optimum 0." in m for m in fitted + hits)
