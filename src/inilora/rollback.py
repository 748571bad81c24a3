"""Putting a model back exactly as it was when wrapping it with PEFT or installing a residual failed
halfway."""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import _get_submodules
from torch import nn

from .peft_glue import find_layer, held_weight, layer_layout, restore_plain_layer


class Snapshot:
    """What wrapping and installing change on a model besides the target layers: which parameters
    train, which modules are in training mode, the attributes PEFT adds (``peft_config``)."""

    def __init__(self, model: nn.Module):
        self.attributes = set(vars(model))
        self.requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        self.training = {n: m.training for n, m in model.named_modules()}

    def unwind(self, model: nn.Module, originals: dict[str, torch.Tensor]) -> None:
        """Put back the original weights of the layers already changed, take PEFT's layers out (as
        PEFT's ``unload`` does; the PeftModel may not exist yet) and restore the flags."""
        with torch.no_grad():
            for name, weight in originals.items():  # E × out × in, by layer key
                layer = find_layer(model, name)
                base, attr = held_weight(layer)
                restore_plain_layer(base, weight.to(getattr(base, attr).device), layer_layout(layer), attr)
        for name, module in list(model.named_modules()):
            if isinstance(module, BaseTunerLayer):
                parent, _, child = _get_submodules(model, name)
                setattr(parent, child, module.get_base_layer())
        for name, p in model.named_parameters():
            p.requires_grad_(self.requires_grad.get(name, p.requires_grad))
        for name, m in model.named_modules():
            m.training = self.training.get(name, m.training)
        for added in set(vars(model)) - self.attributes:
            delattr(model, added)
