"""One line of third-party noise dropped before PEFT imports bitsandbytes (``import peft`` imports it
whenever it is installed, so every ``import inilora`` would print it): on a CPU with AVX512-BF16,
bitsandbytes' CPU backend logs at import, to stderr, that it could not load an optional kernel from the
``kernels`` package — a suggestion, not a failure (it falls back to its own kernel). Only that message
is dropped; bitsandbytes' other messages stay."""

from __future__ import annotations

import logging

BITSANDBYTES_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"
BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"  # the logger bitsandbytes' CPU backend logs to


class _DropKernelNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return BITSANDBYTES_KERNEL_NOTICE not in record.getMessage()


def drop_bitsandbytes_kernel_notice() -> None:
    logger = logging.getLogger(BITSANDBYTES_CPU_LOGGER)  # the same object bitsandbytes gets when it imports
    if not any(isinstance(f, _DropKernelNotice) for f in logger.filters):
        logger.addFilter(_DropKernelNotice())
