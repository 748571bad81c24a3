"""IniLoRA on PEFT: LoRA factors initialized to approximate the pretrained weight, residual frozen.

Public API::

    peft_model = inilora.get_peft_model(model, LoraConfig(...), method="inilora", solver="svd")
    inilora.save_pretrained(peft_model, "out")          # also peft_model.save_pretrained, Trainer checkpoints
    peft_model = inilora.from_pretrained(base_model, "out")
    inilora.export_lora(peft_model, "out-lora")          # plain PEFT, rank 2r, on the original base
    inilora.export_lora(peft_model, "out-r8", rank=8)    # best rank-8 approximation, errors reported
    inilora.save_residual_model(peft_model, "out")       # out/residual_model + out/adapter: train with any stack
    inilora.get_peft_model(model, config, quantize="nf4")  # factors from W, residual stored 4-bit (bitsandbytes)
    model = inilora.merge_and_unload(peft_model)         # plain transformers model
    print(peft_model.inilora.report)                     # one line; .table(): per-layer fit error, drift
"""

from ._quiet import drop_bitsandbytes_kernel_notice

drop_bitsandbytes_kernel_notice()  # before PEFT imports bitsandbytes (see _quiet)

from .distributed import UnshardedFitWarning
from .errors import AdapterLoadError, InitError
from .export import export_lora, merge_and_unload
from .init import get_peft_model
from .install import InitDriftWarning
from .methods import METHODS, get_method
from .offline import save_residual_model
from .options import AdamSchedule, InitOptions, RandomizedSVD
from .persistence import from_pretrained, save_pretrained
from .quantize import QuantizedExportWarning
from .report import InitReport, LayerReport
from .truncation import ExportTruncationWarning

__version__ = "0.1.0"

__all__ = [
    "METHODS", "AdamSchedule", "AdapterLoadError", "ExportTruncationWarning", "InitDriftWarning", "InitError",
    "InitOptions", "InitReport", "LayerReport", "QuantizedExportWarning", "RandomizedSVD", "UnshardedFitWarning",
    "export_lora",
    "from_pretrained", "get_method", "get_peft_model", "merge_and_unload", "save_pretrained", "save_residual_model",
]
