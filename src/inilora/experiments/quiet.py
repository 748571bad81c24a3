"""Quieting what the stack prints, for inilora's own programs (the CLI, benchmark workers) — never on import."""

from __future__ import annotations

import logging

DEEPSPEED_CPU_NOTICE = "Setting accelerator to CPU"


class _DropDeepSpeedCpuNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return DEEPSPEED_CPU_NOTICE not in record.getMessage()


def drop_deepspeed_cpu_notice() -> None:
    """When DeepSpeed is installed, transformers' Trainer imports it, and it announces on *stdout*, as a
    warning, that it found no GPU: a line that breaks ``--json`` output and splits tables. Drop exactly that
    line (its other messages stay)."""
    logger = logging.getLogger("DeepSpeed")  # the logger DeepSpeed configures when imported
    if not any(isinstance(f, _DropDeepSpeedCpuNotice) for f in logger.filters):
        logger.addFilter(_DropDeepSpeedCpuNotice())
