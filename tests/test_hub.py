"""Hub ids: models and adapters named org/name load through the hub cache, the environment is never
changed on import, and an unreachable hub is one clear error naming the model."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig

import inilora
import tiny
from conftest import tiny_model
from inilora import cli
from inilora.errors import AdapterLoadError, ModelError
from inilora.experiments import models

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _env_without_offline() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    return {**env, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_imports_leave_the_environment_alone():
    code = ("import os, inilora.experiments.train, inilora.experiments.models, "
            "inilora.experiments.bench, inilora.cli; "
            "assert 'HF_HUB_OFFLINE' not in os.environ, os.environ['HF_HUB_OFFLINE']")
    proc = subprocess.run([sys.executable, "-c", code], env=_env_without_offline(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline hub cache in tmp_path: ``cache(repo_id, folder)`` places ``folder`` as its main revision."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import by huggingface_hub
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def cache(repo_id: str, folder) -> None:
        repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder, repo / "snapshots" / COMMIT)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
    return cache


def test_a_hub_model_loads_from_the_hub_cache_in_the_dtype_asked(hub_cache, tmp_path):
    hub_cache("org/tiny-bert", tiny.bert_folder(tmp_path / "bert"))
    assert models.resolve("org/tiny-bert") == "org/tiny-bert"
    model = models.load_model("org/tiny-bert", "classification", dtype="bfloat16", revision="main")
    local = models.load_model(tmp_path / "bert", "classification")
    weight = "bert.encoder.layer.0.attention.self.query.weight"
    assert model.get_parameter(weight).dtype == torch.bfloat16
    assert torch.equal(model.get_parameter(weight), local.get_parameter(weight).bfloat16())
    assert len(models.load_tokenizer("org/tiny-bert")) == len(models.load_tokenizer(tmp_path / "bert"))
    with pytest.raises(ModelError, match="revision .* applies to hub models"):
        models.load_model(tmp_path / "bert", "classification", revision="main")
    with pytest.raises(ModelError, match="Unknown dtype 'float8'"):
        models.load_model("org/tiny-bert", "classification", dtype="float8")


def test_an_unreachable_hub_names_the_model(hub_cache):
    for load in (lambda: models.load_model("org/does-not-exist", "generation"),
                 lambda: models.load_tokenizer("org/does-not-exist")):
        with pytest.raises(ModelError, match="'org/does-not-exist'.*the hub could not be reached.*not in the local"):
            load()


def test_a_hub_adapter_loads_by_its_id(hub_cache, tmp_path):
    base = lambda: models.load_model(tiny.bert_folder(tmp_path / "bert"), "classification")  # noqa: E731
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["query", "value"], task_type="SEQ_CLS")
    model = inilora.get_peft_model(base(), config, method="inilora", solver="svd", progress=False)
    for p in model.parameters():
        if p.requires_grad:
            p.data.add_(0.01 * torch.randn_like(p))  # a trained adapter: the reload must reproduce it
    inilora.save_pretrained(model, tmp_path / "adapter")
    hub_cache("org/tiny-adapter", tmp_path / "adapter")
    ids = torch.randint(3, 40, (2, 7))
    reloaded = inilora.from_pretrained(base(), "org/tiny-adapter")
    model.eval()
    reloaded.eval()
    assert torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)
    untouched = base()
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    with pytest.raises(AdapterLoadError, match="'org/missing-adapter' is no local folder.*hub could not be reached"):
        inilora.from_pretrained(untouched, "org/missing-adapter")
    assert all(torch.equal(v, before[k]) for k, v in untouched.state_dict().items())


def test_cli_train_on_an_unreachable_hub_model_is_one_line(hub_cache, tmp_path, capsys):
    data = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(16))
    code = cli.main(["train", "--model", "org/does-not-exist", "--revision", "v1", "--dtype", "bfloat16",
                     "--train-file", str(data), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "'org/does-not-exist'" in err[0] and "the hub could not be reached" in err[0]


def test_cli_train_on_a_hub_model_without_network(tmp_path):
    """For real: no HF_HUB_OFFLINE, the hub is tried (and retried) over the network, which this machine
    lacks. Where the network is up the hub answers instead (no such repository): the model is named too."""
    data = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(16))
    proc = subprocess.run([sys.executable, "-m", "inilora.cli", "train", "--model", "org/does-not-exist", "--train-file",
                           str(data), "-o", str(tmp_path / "out")], env=_env_without_offline(), capture_output=True,
                          text=True, timeout=400)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert last.startswith("inilora train: error: Cannot load hub model 'org/does-not-exist'")
    assert "the hub could not be reached" in last or "the hub answered" in last


def test_an_unreachable_hub_is_found_in_seconds_not_after_retries(tmp_path, monkeypatch):
    """The probe behind the fast failure: a repository not in the cache, and a hub host refusing connections
    (a local port nothing listens on), gives the reason at once; a listening host, a cached repository, a
    proxy or offline mode leave the load to transformers."""
    import socket
    import time

    import huggingface_hub.constants as constants

    from inilora._io import hub_unreachable

    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # a port nothing listens on: the connection is refused
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    why = hub_unreachable("org/model")
    assert why.startswith("the hub could not be reached (127.0.0.1: ") and "'org/model' is not in the local" in why
    assert time.perf_counter() - start < 5
    (tmp_path / "hub" / "models--org--model").mkdir(parents=True)
    assert hub_unreachable("org/model") is None  # cached: the load may work offline
    assert hub_unreachable("org/other") is not None
    untouched = tiny_model("llama")
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    with pytest.raises(AdapterLoadError, match="'org/other' is no local folder .* could not be reached"):
        inilora.from_pretrained(untouched, "org/other")  # an adapter id takes the same probe
    assert all(torch.equal(before[k], v) for k, v in untouched.state_dict().items())
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub_unreachable("org/other") is None  # reached through a proxy: no direct probe
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_unreachable("org/other") is None
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
        assert hub_unreachable("org/other") is None  # the host answers: the hub itself decides
