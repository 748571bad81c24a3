"""IniLoRA on PEFT: LoRA factors initialized to approximate the pretrained weight, residual frozen.

Public API::

    peft_model = inilora.get_peft_model(model, LoraConfig(...), method="inilora")
    inilora.save_pretrained(peft_model, "out")
    peft_model = inilora.from_pretrained(base_model, "out")
    inilora.export_lora(peft_model, "out-lora")      # plain PEFT, rank 2r, on the original base
    inilora.save_residual_model(peft_model, "out")   # out/residual_model + out/adapter: no inilora needed to train
    inilora.get_peft_model(model, config, quantize="nf4")  # factors from W, residual stored 4-bit (bitsandbytes)
    model = inilora.merge_and_unload(peft_model)     # plain transformers model
    print(peft_model.inilora.report)                 # per-layer fit error and drift
"""

from .config import InitOptions
from .errors import AdapterLoadError, InitError
from .init import InitDriftWarning, get_peft_model
from .methods import METHODS
from .offline import save_residual_model
from .persistence import export_lora, from_pretrained, merge_and_unload, save_pretrained
from .quantize import QuantizedExportWarning
from .report import InitReport, LayerReport

__version__ = "0.1.0"

__all__ = [
    "METHODS", "AdapterLoadError", "InitDriftWarning", "InitError", "InitOptions", "InitReport", "LayerReport",
    "QuantizedExportWarning", "export_lora", "from_pretrained", "get_peft_model", "merge_and_unload",
    "save_pretrained", "save_residual_model",
]
