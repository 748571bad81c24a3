"""The experiment app on top of the library: tasks, models, fine-tuning and the benchmark (may import
transformers' Trainer, scipy, matplotlib, reasoning-gym — never imported by ``import inilora``)."""
