"""Tiny models built from configs (random weights with a realistic, decaying spectrum), shared inputs."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

# under pytest-xdist (`make test`), each worker process takes an equal share of the cores, not all of them
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

ARCHS = ("llama", "gpt2", "bert")
TARGETS = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"], "bert": ["query", "value"]}


def free_port() -> str:
    """A TCP port no one listens on now, for a torchrun rendezvous: a fixed port collides when two test workers
    start the same multi-process test at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def tiny_model(arch: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        model = LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                            eos_token_id=0)
        model = GPT2LMHeadModel(config)
    elif arch == "bert":
        config = BertConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=64)
        model = BertModel(config)
    else:
        raise ValueError(arch)
    return model.to(dtype).eval()


def with_spectrum(S: torch.Tensor, out_features: int, in_features: int, seed: int = 0) -> torch.Tensor:
    """A matrix with exactly the singular values ``S`` and random singular vectors."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(out_features, len(S), generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(in_features, len(S), generator=g, dtype=torch.float64))
    return ((U * S.double()) @ V.T).float()


def fit_options(method: str, **options) -> dict:
    """``options`` for a method that runs the IniLoRA fit; none for one that does not (refused there)."""
    import inilora

    return options if inilora.get_method(method).has_fit else {}


def outputs(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=input_ids)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float()


@pytest.fixture(autouse=True)
def fit_cache_in_tmp(tmp_path, monkeypatch):
    """Every test gets its own, empty fit cache."""
    monkeypatch.setenv("INILORA_FIT_CACHE", str(tmp_path / "fit-cache"))


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


def realistic_matrix(out_features: int, in_features: int, seed: int = 0) -> torch.Tensor:
    """A weight with a trained-like spectrum: a few strong directions over a slowly decaying bulk
    (S_i ∝ i^-0.6), entries of std ≈ 0.03."""
    g = torch.Generator().manual_seed(seed)
    k = min(out_features, in_features)
    U, _ = torch.linalg.qr(torch.randn(out_features, k, generator=g))
    V, _ = torch.linalg.qr(torch.randn(in_features, k, generator=g))
    S = torch.arange(1, k + 1, dtype=torch.float32) ** -0.6
    W = (U * S) @ V.T
    return W * (0.03 / W.std())


def train_steps(peft_model, input_ids: torch.Tensor, steps: int = 3, lr: float = 1e-2) -> None:
    """A few optimizer steps on the trainable parameters, so A and B move away from A0 and B0."""
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    peft_model.train()
    for _ in range(steps):
        out = peft_model(input_ids=input_ids)
        values = out.logits if hasattr(out, "logits") else out.last_hidden_state
        loss = values.float()[..., :8].sum()  # not invariant under LayerNorm, unlike a mean square
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()


def checkpointing_trainer(peft_model, out, max_steps: int = 4):
    """A Trainer on 16 random token rows that saves a checkpoint every 2 steps (the resume tests)."""
    from transformers import Trainer, TrainingArguments

    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 128, (16, 12), generator=torch.Generator()
                                                                         .manual_seed(2))]
    args = TrainingArguments(str(out), max_steps=max_steps, save_steps=2, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to="none", use_cpu=True, disable_tqdm=True,
                             logging_strategy="no", remove_unused_columns=False, seed=0)
    return Trainer(model=peft_model, args=args, train_dataset=rows)


@pytest.fixture
def one_thread():
    """One torch thread: tiny convolutions and matmuls run many times slower on two threads of a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
