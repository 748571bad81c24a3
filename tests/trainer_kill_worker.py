"""Run in a subprocess by test_faults.py: a Trainer run of an inilora model (checkpoints every 2 steps),
killed with SIGKILL while it writes checkpoint-4 (after the adapter, before the optimizer state)."""

from __future__ import annotations

import os
import signal
import sys

import torch
from peft import LoraConfig

import inilora
from conftest import TARGETS, checkpointing_trainer, tiny_model


def make():
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS["llama"])
    return inilora.get_peft_model(tiny_model("llama"), config, method="inilora-alpha", progress=False, cache=False)





if __name__ == "__main__":
    from transformers import Trainer

    torch.set_num_threads(1)
    save_optimizer = Trainer._save_optimizer_and_scheduler

    def killed_in_checkpoint_4(self, output_dir):
        if os.path.basename(output_dir) == "checkpoint-4":
            os.kill(os.getpid(), signal.SIGKILL)
        return save_optimizer(self, output_dir)

    Trainer._save_optimizer_and_scheduler = killed_in_checkpoint_4
    checkpointing_trainer(make(), sys.argv[1]).train()
