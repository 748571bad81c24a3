"""IniLoRA on PEFT: LoRA factors initialized to approximate the pretrained weight, residual frozen.

Public API::

    peft_model = inilora.get_peft_model(model, LoraConfig(...), method="inilora")
    inilora.save_pretrained(peft_model, "out")
    peft_model = inilora.from_pretrained(base_model, "out")
    inilora.export_lora(peft_model, "out-lora")      # plain PEFT, rank 2r, on the original base
    model = inilora.merge_and_unload(peft_model)     # plain transformers model
    print(peft_model.inilora.report)                 # per-layer fit error and drift
"""

from .errors import AdapterLoadError, InitError
from .init import InitDriftWarning, get_peft_model
from .methods import METHODS, get_method
from .options import AdamSchedule, InitOptions, RandomizedSVD
from .persistence import export_lora, from_pretrained, merge_and_unload, save_pretrained
from .report import InitReport, LayerReport

__version__ = "0.1.0"

__all__ = [
    "METHODS", "AdamSchedule", "AdapterLoadError", "InitDriftWarning", "InitError", "InitOptions", "InitReport",
    "LayerReport", "RandomizedSVD", "export_lora", "from_pretrained", "get_method", "get_peft_model",
    "merge_and_unload", "save_pretrained",
]
