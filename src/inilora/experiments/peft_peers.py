"""PEFT's own LoRA initializations as benchmark peers (``peft:olora`` ...), built through PEFT's API only.

Each peer is a :class:`Peer` in :data:`PEERS`: the value PEFT's ``LoraConfig.init_lora_weights`` takes, and
whether it needs training batches:

- ``peft:olora``, ``peft:pissa_niter_4``: residual (PEFT subtracts ``s·B0·A0`` from the base weight in place);
  the initialized model computes what the base did, up to rounding;
- ``peft:gaussian``: ``A0 ~ N(0, 1/r)``, ``B0 = 0``;
- ``peft:lora_ga``: LoRA-GA, from the gradient of the loss on the batches (``preprocess_loraga``, run before
  ``get_peft_model``); residual like PiSSA;
- ``peft:eva``: EVA, ``A0`` from the SVD of the layers' inputs on the batches (``initialize_lora_eva_weights``),
  ``B0 = 0``; PEFT may move rank between layers (``EvaConfig.rho``).

They need no inilora persistence: PEFT saves them. PEFT's residual adapters (olora, pissa, lora_ga) load on the
*original* base model only after PEFT's conversion (``save_pretrained(...,
path_initial_model_for_weight_conversion=...)``), as PEFT documents.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import peft
from peft import LoraConfig, PeftModel, get_peft_model

from inilora.errors import InitError

PREFIX = "peft:"


def _loraga_config(lora_config: LoraConfig, batches: Sequence[dict]) -> dict:
    try:
        from peft import LoraGAConfig
    except ImportError as exc:
        raise InitError(f"peft {peft.__version__} has no LoRA-GA; peft:lora_ga needs a newer peft "
                        "(tested with 0.21.2).") from exc
    return {"lora_ga_config": lora_config.lora_ga_config or LoraGAConfig()}


def _loraga(model, config: LoraConfig, batches: Sequence[dict]) -> PeftModel:
    from peft.tuners.lora.loraga import preprocess_loraga

    def train_step() -> None:  # PEFT accumulates the gradients of the target weights over these passes
        for batch in batches:
            model(**batch).loss.backward()

    preprocess_loraga(model, config, train_step)
    return get_peft_model(model, config)


def _eva_config(lora_config: LoraConfig, batches: Sequence[dict]) -> dict:
    from peft import EvaConfig

    # PEFT's label mask is for token-level labels (language modelling); a class label per sequence has none
    labels, ids = batches[0]["labels"], batches[0]["input_ids"]
    return {"eva_config": lora_config.eva_config or EvaConfig(use_label_mask=labels.shape == ids.shape)}


def _eva(model, config: LoraConfig, batches: Sequence[dict]) -> PeftModel:
    from peft import initialize_lora_eva_weights

    peft_model = get_peft_model(model, config, low_cpu_mem_usage=True)
    # PEFT's EVA wants plain dicts (a tokenizer's BatchEncoding is a Mapping, not a dict)
    initialize_lora_eva_weights(peft_model, dataloader=[dict(b) for b in batches], show_progress_bar=False)
    return peft_model


@dataclass(frozen=True)
class Peer:
    init_lora_weights: str  # PEFT's name for it
    residual: bool = False  # the base weight is replaced by W - s·B0·A0
    build: Callable | None = None  # (model, config, batches) -> PeftModel: a data-driven peer's PEFT calls
    sub_config: Callable | None = None  # (lora_config, batches) -> the LoraConfig fields the peer needs

    @property
    def needs_data(self) -> bool:
        return self.build is not None


PEERS: dict[str, Peer] = {
    "peft:olora": Peer("olora", residual=True),
    "peft:pissa_niter_4": Peer("pissa_niter_4", residual=True),
    "peft:gaussian": Peer("gaussian"),
    "peft:lora_ga": Peer("lora_ga", residual=True, build=_loraga, sub_config=_loraga_config),
    "peft:eva": Peer("eva", build=_eva, sub_config=_eva_config),
}


def get_peer_model(model, lora_config: LoraConfig, method: str,
                   batches: Sequence[dict] | None = None) -> tuple[PeftModel, dict]:
    """Wrap ``model`` with PEFT's initialization ``method`` (a key of :data:`PEERS`).

    ``batches`` (model inputs with ``labels``) feed the data-driven peers. Returns the PeftModel and
    ``{"method", "init_lora_weights", "seconds", "ranks"}``, ``seconds`` being the whole initialization
    (gradient or activation passes included). Like PEFT's ``get_peft_model``, it wraps ``model`` in place;
    bad requests are refused before the model is touched."""
    if method not in PEERS:
        raise InitError(f"Unknown PEFT peer {method!r}; choose one of {', '.join(PEERS)}.")
    peer = PEERS[method]
    if peer.needs_data and not batches:
        raise InitError(f"{method} is initialized from data: pass a few training batches (batches=[...]).")
    if batches and any("input_ids" not in b or "labels" not in b for b in batches):
        raise InitError(f"{method}: every batch needs input_ids and labels.")
    extra = peer.sub_config(lora_config, batches) if peer.sub_config else {}
    config = dataclasses.replace(lora_config, init_lora_weights=peer.init_lora_weights, **extra)
    was_training = model.training
    start = time.perf_counter()
    peft_model = peer.build(model, config, batches) if peer.build else get_peft_model(model, config)
    seconds = time.perf_counter() - start
    peft_model.train(was_training)
    model.zero_grad(set_to_none=True)
    ranks = {name: layer.r["default"] for name, layer in peft_model.named_modules()
             if hasattr(layer, "lora_A") and "default" in getattr(layer, "r", {})}
    return peft_model, {"method": method, "init_lora_weights": peer.init_lora_weights, "seconds": round(seconds, 3),
                        "ranks": ranks}
