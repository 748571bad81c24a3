"""Save, reload, export and merge IniLoRA adapters.

A saved directory is a normal PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``)
plus ``inilora_init.safetensors`` (the initial factors exactly as stored) and ``inilora_config.json``
(method, options, a fingerprint of each original base weight, a sha256 of every file the load reads,
sealed by a checksum of its own). That is all :func:`from_pretrained` needs to rebuild the residual
from the original base, bit for bit, and to refuse a corrupted file before the model is touched.

The model returned by ``inilora.get_peft_model`` / :func:`from_pretrained` saves completely through
its own ``save_pretrained`` (what ``Trainer`` calls for checkpoints and ``push_to_hub`` for uploads):
it is :func:`save_pretrained`, bound to the model.

**A save is all or nothing.** Every save (:func:`save_pretrained`, ``export_lora``,
``save_residual_model``) writes a new folder beside the old one and swaps it in (``_io.replaced_folder``):
a kill, a full disk or an exception at any instant leaves the previous folder complete and loadable.

**Plain PEFT refuses a residual adapter.** Loaded by ``peft.PeftModel.from_pretrained`` onto the
original base, a residual adapter would compute a different model without any warning. So the saved
``adapter_config.json`` of a residual method carries, instead of its ``task_type`` and its
``target_modules``, a text that reads as an instruction (and, as a pattern, matches no module name);
PEFT then raises its own ``ValueError`` when it reads the config, for every task type ("Invalid task
type: 'inilora residual adapter: load it with inilora.from_pretrained…'"), before loading any weight.
The real ``task_type`` and ``target_modules`` (and ``layers_to_transform`` / ``layers_pattern``, which
PEFT forbids next to a pattern) are kept in ``inilora_config.json`` and put back by
:func:`from_pretrained`. ``Trainer``'s resume is not affected: it loads weights into the adapter the
model already has, without reading the config. A save meant for plain PEFT on the residual model itself
opts out with ``refuse_plain_peft=False``.
"""

from __future__ import annotations

import inspect
import json
import os
import time
import types
from pathlib import Path

import peft
import torch
from peft import LoraConfig, PeftModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ._io import hub_failure, hub_unreachable, is_hub_id, recover_folder, replaced_folder
from .checksums import file_sha256, read_sealed, verify_files, write_sealed
from .errors import AdapterLoadError, InitError
from .install import install_layer, new_report, warn_on_drift
from .methods import Factors, resolve
from .options import InitOptions
from .peft_glue import NoTargetError, collect_targets, layer_fingerprint, layer_keys, layer_matrices, lora_layers, resolve_config
from .original_base import keep_the_original_base
from .quantize import needs_quantization, quantize_targets
from .rollback import Snapshot
from .state import InitState, LayerState

INIT_FILE = "inilora_init.safetensors"
META_FILE = "inilora_config.json"
CONFIG_FILE = "adapter_config.json"
READ_BY_LOAD = (CONFIG_FILE, "adapter_model.safetensors", "adapter_model.bin", INIT_FILE)  # checksummed
ADAPTER_FILES = (*READ_BY_LOAD, META_FILE)  # one save's set: never mixed with files of an earlier save
FORMAT_VERSION = 3
# the formats this version reads, and how each hashed the weights' fingerprints (3: xxh3_128; 2: SHA-256)
FINGERPRINT_HASH_OF_FORMAT = {2: "sha256", 3: "xxh3_128"}
ANOTHER_BASE = "This adapter belongs to another base model"
PLAIN_PEFT_GUARD = ("inilora residual adapter: load it with inilora.from_pretrained(base_model, path); plain PEFT "
                    "would put it on the original weights and compute a different model")
# task_type: PEFT validates it when it reads the config, for every task type, so the guard is its error message
# ("Invalid task type: 'inilora residual adapter: …'"); a classifier's modules_to_save would hide the one of
# target_modules behind PEFT's generic "No modules were targeted"
GUARDED_FIELDS = ("target_modules", "layers_to_transform", "layers_pattern", "task_type", "target_parameters")
HUB_ARGS = ("repo_id", "token", "private", "commit_message", "revision", "create_pr")
CARD_TITLE = "## IniLoRA adapter — load it with `inilora`"
CARD_NOTE = """
{title}

This adapter was trained on a *residual* base (`W − s·B0·A0`, method `{method}`). Load it with
`inilora.from_pretrained(base_model, path)`, which rebuilds the residual from the original base.
Plain `peft.PeftModel.from_pretrained` refuses it (it would put it on the unmodified base and give a
different model); for plain PEFT, use the rank-2r adapter written by `inilora.export_lora`.
"""


def state_of(peft_model: PeftModel) -> InitState:
    state = getattr(peft_model, "inilora", None)
    if not isinstance(state, InitState):
        raise InitError("This model was not made by inilora.get_peft_model or inilora.from_pretrained.")
    return state


def attach(peft_model: PeftModel, state: InitState) -> None:
    """Record what an initialization left behind on the model, and make the model's own
    ``save_pretrained`` (PEFT's, called by ``Trainer`` and ``push_to_hub``) :func:`save_pretrained`; a residual
    model's ``disable_adapter()`` and ``unload()`` give the original base (:mod:`.original_base`)."""
    peft_model.inilora = state
    peft_model.save_pretrained = types.MethodType(save_pretrained, peft_model)
    keep_the_original_base(peft_model, state)


def _adapter_dir(path: str | os.PathLike, adapter_name: str) -> Path:
    # PEFT saves a non-default adapter into a subfolder named after it
    return Path(path) if adapter_name == "default" else Path(path) / adapter_name


def replaces_adapter(*names: str):
    """Which files of an existing folder a save of an adapter replaces: in each folder where it writes an
    ``adapter_config.json``, the adapter's files (:data:`ADAPTER_FILES`, and ``names``) as a set — one that
    this save does not write again is removed, not left beside the new ones. Everything else is kept."""
    owned = (*ADAPTER_FILES, *names)
    return lambda rel, new: rel.name in owned and (new / rel.parent / CONFIG_FILE).is_file()


def save_pretrained(peft_model: PeftModel, path: str | os.PathLike, *args, refuse_plain_peft: bool = True,
                    push_to_hub: bool = False, **kwargs) -> Path:
    """Save the adapter with PEFT's ``save_pretrained`` (``args``/``kwargs`` are PEFT's, e.g.
    ``is_main_process``, ``selected_adapters``) and add what rebuilds its residual; return the adapter's
    directory (``path``, or PEFT's ``path/adapter_name`` for a non-default adapter). Also bound to the
    model as ``peft_model.save_pretrained``.

    Atomic: everything is written into a temporary folder beside ``path``, flushed, and swapped in whole,
    so a kill, a full disk or an exception at any instant leaves ``path`` as it was or completely saved
    (``_io.replaced_folder``). Replaced: ``adapter_config.json``, ``adapter_model.safetensors`` /
    ``adapter_model.bin``, ``inilora_init.safetensors``, ``inilora_config.json`` in each adapter folder
    written (one of them not written again is removed) and ``README.md`` (updated, as PEFT does). Kept
    as they were: every other file and folder under ``path`` (a checkpoint's optimizer and trainer state,
    other adapters, the user's files). A save needs room for the old and the new adapter at once.

    ``refuse_plain_peft`` (residual methods): make ``peft.PeftModel.from_pretrained`` raise on this
    adapter (see the module docstring); ``False`` only for an adapter meant for the residual model.
    ``push_to_hub``: upload the directory once everything is written (``repo_id``, default the
    directory's name; ``token``, ``private``, ``commit_message``, ``revision``, ``create_pr``)."""
    state = state_of(peft_model)
    hub = {k: kwargs.pop(k) for k in HUB_ARGS if k in kwargs}
    peft_save = type(peft_model).save_pretrained
    bound = inspect.signature(peft_save).bind(peft_model, str(path), *args, **kwargs)
    bound.apply_defaults()
    if bound.arguments.get("path_initial_model_for_weight_conversion") is not None:
        raise InitError("path_initial_model_for_weight_conversion is PEFT's conversion for its own PiSSA/OLoRA; "
                         "use inilora.export_lora for a plain LoRA adapter on the original base.")
    if state.is_residual and "save_embedding_layers" not in kwargs:
        # PEFT's "auto" would save a targeted embedding's weight, which here is the residual: reloaded, it would
        # replace the original weight the residual is rebuilt from
        bound.arguments["save_embedding_layers"] = False
    out = _adapter_dir(path, state.adapter_name)
    if not bound.arguments["is_main_process"]:
        peft_save(*bound.args, **bound.kwargs)
        return out
    with replaced_folder(path, replaces_adapter(), seed=("README.md",)) as new:
        bound.arguments["save_directory"] = str(new)
        peft_save(*bound.args, **bound.kwargs)
        if state.adapter_name in (bound.arguments["selected_adapters"] or peft_model.peft_config):
            _write_init_files(state, _adapter_dir(new, state.adapter_name), refuse_plain_peft)
    if push_to_hub:
        _push(Path(path), **hub)
    return out


def _write_init_files(state: InitState, out: Path, refuse_plain_peft: bool) -> None:
    tensors = {}
    for name, layer in state.layers.items():
        tensors[f"{name}.lora_A0"] = layer.A0.contiguous()
        tensors[f"{name}.lora_B0"] = layer.B0.contiguous()
    save_file(tensors, out / INIT_FILE, metadata={"format": "pt", "inilora_format": str(FORMAT_VERSION)})
    guarded = None
    if state.is_residual and refuse_plain_peft:
        config = json.loads((out / CONFIG_FILE).read_text())
        guarded = {k: config.get(k) for k in GUARDED_FIELDS}
        config.update(target_modules=PLAIN_PEFT_GUARD, layers_to_transform=None, layers_pattern=None,
                      task_type=PLAIN_PEFT_GUARD, target_parameters=None)
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    optimum = {row.name: row.optimum for row in state.report.layers} if state.report else {}
    write_sealed(out / META_FILE, {
        "format_version": FORMAT_VERSION,
        "adapter_name": state.adapter_name,
        "options": state.options.to_dict(),
        "plain_peft_guard": guarded,
        "files": {name: file_sha256(out / name) for name in READ_BY_LOAD if (out / name).is_file()},
        "versions": {"torch": torch.__version__, "peft": peft.__version__},
        "layers": {name: {"fingerprint": layer.fingerprint, "weight_dtype": str(layer.weight_dtype).split(".")[-1],
                          "scaling": layer.scaling, "residual_fp32": layer.residual_fp32,
                          "optimum": optimum.get(name), "fingerprints": layer.fingerprints}
                   for name, layer in state.layers.items()},
    })
    card = out / "README.md"
    if state.is_residual and CARD_TITLE not in (card.read_text() if card.is_file() else ""):
        with open(card, "a") as f:
            f.write(CARD_NOTE.format(title=CARD_TITLE, method=state.options.method))


def _push(folder: Path, repo_id: str | None = None, token: str | None = None, private: bool | None = None,
          commit_message: str | None = None, revision: str | None = None, create_pr: bool = False) -> None:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id or folder.resolve().name, private=private, exist_ok=True).repo_id
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message or "Upload IniLoRA adapter",
                      revision=revision, create_pr=create_pr)


def _download(repo_id: str, revision: str | None) -> Path:
    """A hub adapter repository -> its local snapshot (downloaded, or read from the hub cache)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    if why := hub_unreachable(repo_id):
        raise AdapterLoadError(f"{repo_id!r} is no local folder and the hub adapter of that id cannot be "
                               f"downloaded: {why}.")
    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except (OSError, ValueError, HfHubHTTPError) as exc:
        raise AdapterLoadError(f"{repo_id!r} is no local folder and the hub adapter of that id cannot be "
                               f"downloaded: {hub_failure(repo_id, exc)}.") from exc


def _locate(path: str | os.PathLike, adapter_name: str, revision: str | None = None) -> Path:
    """The directory holding the adapter: ``path`` itself, or ``path/adapter_name`` as PEFT saves a
    named adapter; a hub id ``org/name`` that is no local path is downloaded first (at ``revision``). A local
    folder whose save was killed midway is first put back as it was (``_io.recover_folder``)."""
    if is_hub_id(path):
        path = _download(str(path), revision)
    path = Path(path)
    for folder in (path, path.parent):  # a save killed between its two renames (no atomic swap here)
        try:
            recover_folder(folder)
        except OSError:  # a read-only place: the load says what is missing
            pass
    if not (path / CONFIG_FILE).is_file() and (_adapter_dir(path, adapter_name) / CONFIG_FILE).is_file():
        return _adapter_dir(path, adapter_name)
    return path


def _read_saved(path: Path) -> tuple[dict, dict[str, torch.Tensor], LoraConfig]:
    """The record, the initial factors and the true ``LoraConfig``, every file checked first."""
    meta_path, init_path = path / META_FILE, path / INIT_FILE
    if not (path / CONFIG_FILE).is_file():
        raise AdapterLoadError(f"{path} holds no {CONFIG_FILE}: not a saved adapter.")
    if not meta_path.is_file():
        raise AdapterLoadError(f"{path} has no {META_FILE}: it was not saved by inilora.save_pretrained "
                               "(a plain PEFT adapter loads with peft.PeftModel.from_pretrained).")
    meta = read_sealed(meta_path)
    if meta.get("format_version") not in FINGERPRINT_HASH_OF_FORMAT:
        raise AdapterLoadError(f"{meta_path} has format version {meta.get('format_version')!r}; this inilora "
                               f"reads versions {', '.join(map(str, FINGERPRINT_HASH_OF_FORMAT))}.")
    verify_files(path, meta["files"])
    if INIT_FILE not in meta["files"]:
        raise AdapterLoadError(f"{path} is missing {INIT_FILE}, the initial factors the residual is rebuilt from.")
    try:
        tensors = load_file(init_path)
        attributes = {**LoraConfig.from_json_file(str(path / CONFIG_FILE)), **(meta["plain_peft_guard"] or {})}
        config = LoraConfig.from_peft_type(**LoraConfig.check_kwargs(**attributes))  # PEFT's from_pretrained, guard off
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterLoadError(f"{path} cannot be read ({exc}).") from exc
    if isinstance(config.target_modules, list):
        config.target_modules = set(config.target_modules)
    return meta, tensors, config


def from_pretrained(base_model: nn.Module, path: str | os.PathLike, *, adapter_name: str = "default",
                    is_trainable: bool = False, revision: str | None = None,
                    residual_fp32: bool | None = None) -> PeftModel:
    """Load an adapter saved by :func:`save_pretrained` (or a ``Trainer`` checkpoint of an inilora
    model) onto a freshly loaded *original* base model. ``path`` may be the directory a named adapter
    was saved into or its parent (PEFT writes adapter ``name`` into ``path/name``), or a hub repository
    id ``org/name`` (at ``revision``) that ``save_pretrained(push_to_hub=True)`` uploaded.

    Everything is checked before the model is touched: every file against its recorded sha256, and
    that each target weight is byte-identical to the one the adapter was made on (fingerprints). A
    failure after that (while PEFT wraps the model or the residual is installed) unwinds: the model
    is left exactly as it was. Until the load succeeds, a CPU copy of each changed weight is held.

    The base may be the same checkpoint loaded in another dtype (float32, bfloat16 or float16) than the one
    the adapter was made on: the adapter records the original weight's fingerprint in each of them. The
    residual is then rebuilt in fp32 from the weight as loaded and the stored factors, and stored in the
    base's dtype (in fp32 with ``residual_fp32=True``; None: as the adapter was made). A 4-bit residual is
    rebuilt only in the dtype it was made in."""
    start = time.perf_counter()
    path = _locate(path, adapter_name, revision)
    meta, tensors, config = _read_saved(path)
    method, options = resolve(None, InitOptions.from_record(meta["options"]), {})
    config = resolve_config(config, base_model)
    recorded = meta["layers"]
    try:
        targets = collect_targets(base_model, config, method, rank_limited=False, residual=method.residual,
                                  caller="inilora.from_pretrained")
    except NoTargetError as exc:
        raise AdapterLoadError(f"{ANOTHER_BASE}: {exc}") from exc
    by_layer = layer_keys(targets)
    found = set(by_layer)
    if found != set(recorded):
        raise AdapterLoadError(f"{ANOTHER_BASE}: its target layers differ from this model's: missing "
                               f"{sorted(set(recorded) - found)[:5]}, unexpected {sorted(found - set(recorded))[:5]}.")
    fingerprints = {}
    for name, matrices in by_layer.items():
        info = recorded[name]
        dtype = str(matrices[0].weight.dtype).split(".")[-1]
        in_dtypes = info.get("fingerprints") or {}
        if dtype != info["weight_dtype"] and (dtype not in in_dtypes or options.quantize is not None):
            why = ("its 4-bit residual is rebuilt only in that dtype" if options.quantize is not None else
                   f"it records the original weights in {', '.join(sorted(in_dtypes)) or 'that dtype only'}")
            raise AdapterLoadError(f"Layer {name!r} of the base model is {dtype}; the adapter was made on a "
                                   f"{info['weight_dtype']} base and {why}. Load the base in {info['weight_dtype']}.")
        fingerprints[name] = info["fingerprint"] if dtype == info["weight_dtype"] else in_dtypes[dtype]
        if layer_fingerprint(matrices, algorithm=FINGERPRINT_HASH_OF_FORMAT[meta["format_version"]]) != fingerprints[name]:
            raise AdapterLoadError(f"{ANOTHER_BASE}: layer {name!r} of this model differs from the weight the "
                                   "adapter was made on (fingerprint mismatch); load the base model it was made on.")
        for key in (f"{name}.lora_A0", f"{name}.lora_B0"):
            if key not in tensors:
                raise AdapterLoadError(f"{path / INIT_FILE} lacks {key}.")

    # the model changes from here on; any failure puts it back as it was
    snapshot, originals, quantized = Snapshot(base_model), {}, None
    try:
        if needs_quantization(targets, options):  # the 4-bit residual, rebuilt identically (deterministic)
            quantized = quantize_targets(base_model, method, targets, {t.name: Factors(
                tensors[f"{t.name}.lora_A0"], tensors[f"{t.name}.lora_B0"], recorded[t.name]["optimum"])
                for t in targets}, options, refine=False)
        peft_model = PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name,
                                               is_trainable=is_trainable, config=config)
        state = InitState(options, method, adapter_name, report=new_report(method, options))
        with torch.no_grad():
            for name, layer in lora_layers(peft_model, list(by_layer)).items():
                A0, B0 = tensors[f"{name}.lora_A0"], tensors[f"{name}.lora_B0"]
                keep_fp32 = recorded[name]["residual_fp32"] if residual_fp32 is None else residual_fp32
                if quantized is None:  # a 4-bit swap keeps the original layer aside whole
                    originals[name] = layer_matrices(layer).detach().to("cpu", copy=True)
                state.report.layers.append(install_layer(layer, adapter_name, name, A0, B0, method,
                                                         keep_fp32, recorded[name]["optimum"], quantized))
                state.layers[name] = LayerState(A0, B0, layer.scaling[adapter_name], fingerprints[name],
                                                by_layer[name][0].weight.dtype, keep_fp32,
                                                recorded[name].get("fingerprints") or {})
    except BaseException as exc:
        if quantized:
            quantized.restore()
        snapshot.unwind(base_model, originals)
        if isinstance(exc, Exception):
            raise AdapterLoadError(f"Loading {path} failed ({type(exc).__name__}: {exc}); the model was put back "
                                   "as it was.") from exc
        raise
    state.report.seconds = time.perf_counter() - start
    attach(peft_model, state)
    warn_on_drift(state.report)
    return peft_model
