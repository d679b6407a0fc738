"""Where a stage runs and with what: the device it resolves and the package versions that
every stage records in its config.json."""
from __future__ import annotations

import platform

import torch


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when torch sees one, else cpu; an explicit 'cuda' on a machine without
    one is refused here, with the value, instead of deep inside the first kernel."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a torch device (e.g. auto, cpu, cuda, cuda:1)") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    return dev


def environment(device: str) -> dict:
    """Package versions and the device, for config.json."""
    import datasets
    import numpy
    import safetensors
    import sklearn

    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "datasets": datasets.__version__,
            "safetensors": safetensors.__version__, "scikit-learn": sklearn.__version__,
            "device": device,
            "device_name": (torch.cuda.get_device_name(torch.device(device))
                            if device.startswith("cuda") else platform.processor() or platform.machine())}
