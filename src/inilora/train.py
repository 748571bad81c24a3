"""Fine-tuning moved to :mod:`inilora.experiments.train` (the library core imports no experiment machinery);
this alias keeps the old ``import inilora.train`` / ``from inilora.train import finetune`` working — it is
that module, loaded only when asked for."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("inilora.experiments.train")
