"""What every benchmark records beside its numbers: the machine it ran on."""

from __future__ import annotations

import os
import platform

import torch
import torchvision

from dynprune_lib.train import hardware_name


def machine_info() -> dict:
    """Versions, threads, CPU and load: enough to judge whether two runs compare."""
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hardware": hardware_name("cpu"),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15min": list(os.getloadavg()),
    }
