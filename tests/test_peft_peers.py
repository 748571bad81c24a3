"""PEFT's initializations as peers, on a tiny BERT classifier built from a config."""

import pytest
import torch
from peft import LoraConfig
from transformers import BertConfig, BertForSequenceClassification

from inilora.errors import InitError
from inilora.experiments.peft_peers import PEERS, get_peer_model

R = 4


def tiny_classifier(seed: int = 0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(config).eval()


def batches(seed: int = 1, n: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 128, (8, 16), generator=g),
             "attention_mask": torch.ones(8, 16, dtype=torch.long),
             "labels": torch.randint(0, 2, (8,), generator=g)} for _ in range(n)]


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def config() -> LoraConfig:
    return LoraConfig(r=R, lora_alpha=R, target_modules=["query", "value"], task_type="SEQ_CLS")


def lora_layers(peft_model) -> dict:
    return {name: m for name, m in peft_model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


@pytest.mark.parametrize("method", list(PEERS))
def test_each_peer_starts_where_it_promises(method):
    model, probe = tiny_classifier(), batches(seed=9, n=1)[0]
    reference = logits(model, probe)
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith(("query", "value"))}
    peft_model, info = get_peer_model(model, config(), method, batches() if PEERS[method].needs_data else None)
    assert info["seconds"] > 0 and info["init_lora_weights"] == PEERS[method].init_lora_weights
    layers = lora_layers(peft_model)
    assert len(layers) == 4  # query and value in 2 layers
    # every peer starts at the base model's function (residual: W - sBA + sBA; the others: B = 0)
    assert torch.allclose(logits(peft_model, probe), reference, atol=1e-5)
    for name, layer in layers.items():
        A, B = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
        r = A.shape[0]
        W = weights[name.removeprefix("base_model.model.")]
        residual = layer.base_layer.weight.detach()
        if PEERS[method].residual:
            assert B.abs().max() > 0
            torch.testing.assert_close(residual + layer.scaling["default"] * B @ A, W, atol=1e-5, rtol=0)
        else:
            assert B.abs().max() == 0 and torch.equal(residual, W)
        if method == "peft:olora":  # B0 = Q[:, :r] of W = QR: orthonormal columns
            torch.testing.assert_close(B.T @ B, torch.eye(r), atol=1e-5, rtol=0)
        if method == "peft:pissa_niter_4":  # s·B0A0 ≈ W's best rank-r approximation (randomized SVD, 4 iterations)
            S = torch.linalg.svdvals(W)
            optimum = S[r:].square().sum().sqrt()
            assert torch.linalg.norm(residual) < 1.05 * optimum
        if method == "peft:gaussian":  # PEFT draws A0 ~ N(0, 1/r)
            assert abs(A.std().item() - 1 / r) < 0.2 / r
        if method in ("peft:lora_ga", "peft:eva"):  # A0's rows are right singular vectors: orthonormal
            torch.testing.assert_close(A @ A.T, torch.eye(r), atol=1e-4, rtol=0)
    if method == "peft:eva":
        assert sum(info["ranks"].values()) == 4 * R  # EVA redistributes rank but keeps the budget


def test_lora_ga_takes_a0_from_the_gradient():
    """A0's rows span the top right singular vectors of the loss gradient of W on the batches."""
    model = tiny_classifier()
    model.train()
    for batch in batches():
        model(**batch).loss.backward()
    query = model.bert.encoder.layer[0].attention.self.query
    _, _, Vh = torch.linalg.svd(query.weight.grad / len(batches()))
    peft_model, _ = get_peer_model(tiny_classifier(), config(), "peft:lora_ga", batches())
    A = peft_model.base_model.model.bert.encoder.layer[0].attention.self.query.lora_A["default"].weight.detach()
    overlap = (A @ Vh[:R].T).square().sum() / R  # 1: the same subspace; about R/64 for a random one
    assert overlap > 0.95


def test_eva_depends_on_the_data():
    def first_A(seed):
        peft_model, _ = get_peer_model(tiny_classifier(), config(), "peft:eva", batches(seed=seed))
        layer = next(iter(lora_layers(peft_model).values()))
        return layer.lora_A["default"].weight.detach()

    a, b = first_A(1), first_A(1)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)  # the same batches: the same start
    assert (first_A(5).abs() - a.abs()).abs().max() > 1e-2  # other batches: another start (up to sign)


def test_bad_requests_name_the_problem():
    with pytest.raises(InitError, match="Unknown PEFT peer 'peft:corda'"):
        get_peer_model(tiny_classifier(), config(), "peft:corda")
    with pytest.raises(InitError, match="initialized from data"):
        get_peer_model(tiny_classifier(), config(), "peft:eva")
    with pytest.raises(InitError, match="needs input_ids and labels"):
        get_peer_model(tiny_classifier(), config(), "peft:lora_ga", [{"input_ids": torch.zeros(1, 4, dtype=torch.long)}])
