"""State isolation: whatever a monitor does between two training steps, the run cannot tell.

* :func:`preserved` restores every submodule's train/eval flag and every random generator a
  training loop may draw from — torch's CPU and CUDA generators, Python's ``random`` and NumPy's
  legacy global generator — so the trajectory is bit-identical with and without the monitor.
* :func:`compute_context` turns gradients on, inference mode and autocast off for the duration:
  the NTK is computed in full precision whatever the surrounding training step does.
* :func:`float32_state` gives float32 copies of a module's floating-point parameters and buffers
  when training runs in half precision (``bf16-true``, ``16-true``): the kernel is then that of
  the float32 function at the half-precision weights.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["compute_context", "float32_state", "preserved", "rng_preserved"]

_HALF = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Restore every global random generator on exit: torch (CPU, CUDA), Python ``random``, NumPy.

    Example:
        >>> state = random.getstate()
        >>> with rng_preserved():
        ...     _ = random.random(), np.random.rand(), torch.rand(1)
        >>> random.getstate() == state
        True
    """
    cpu_rng = torch.get_rng_state()
    cuda_rng = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    python_rng = random.getstate()
    numpy_rng = np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)


@contextlib.contextmanager
def preserved(module: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag and all global random generators on exit.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
        >>> state = torch.get_rng_state()
        >>> with preserved(net):
        ...     _ = net.eval(), torch.rand(3), random.random(), np.random.rand()
        >>> net.training, torch.equal(torch.get_rng_state(), state)
        (True, True)
    """
    modes = [(m, m.training) for m in module.modules()]
    try:
        with rng_preserved():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def compute_context(module: nn.Module) -> Iterator[None]:
    """Gradients on, inference mode and autocast off: the NTK is computed in full precision."""
    device_type = next((p.device.type for p in module.parameters()), "cpu")
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device_type, enabled=False):
        yield


def float32_state(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached tensors with every half-precision floating-point one copied to float32.

    Tensors already in float32/float64 (and integer buffers) are returned as they are, without a copy.

    Example:
        >>> out = float32_state({"w": torch.ones(2, dtype=torch.bfloat16), "n": torch.tensor(3)})
        >>> out["w"].dtype, out["n"].dtype
        (torch.float32, torch.int64)
    """
    return {k: (v.detach().float() if v.dtype in _HALF else v.detach()) for k, v in tensors.items()}
