"""inferbox: a Kaito-style single-container chat inference server."""

import logging

__version__ = "0.1.0"


def _import_noise(record: logging.LogRecord) -> bool:
    """Drop two warnings torchao (QUANTIZATION=int8) prints whenever it is imported, which
    transformers' quantizer registry does at every start: its CUDA-only extensions failing to load
    on a machine without CUDA, and torch's notice that registering its enums is deprecated. Neither
    is about this server; every other message of theirs passes."""
    message = record.getMessage()
    if message.startswith("Failed to load") and "torchao" in message:
        import torch

        return torch.cuda.is_available()
    return "is an Enum subclass and is now natively supported" not in message


logging.getLogger("torchao").addFilter(_import_noise)
logging.getLogger("torch.utils._pytree").addFilter(_import_noise)
