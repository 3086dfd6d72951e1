"""``--device auto|cpu|cuda``."""
import torch

from running.errors import UsageError
from running.numerics import configure_cuda


def resolve_device(name):
    """``auto`` -> CUDA when present else CPU; ``cuda`` when absent is a usage error. On CUDA
    the settings that decide GPU arithmetic are made explicit (``numerics.configure_cuda``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA device is available "
                         "(use --device cpu or auto)")
    device = torch.device(name)
    if device.type == "cuda":
        configure_cuda()
    return device
