"""One run on a share of a GPU: cap its CUDA allocator so that several runs fit side by side.

A search trial with ``resources.gpu`` below 1 (``hpo/trainable.py``) and the packing benchmark
(``bench/gpu_packing.py``) call :func:`cap_gpu_memory` before they allocate: a run that needs more
than its share then fails alone, with its own out-of-memory error, instead of starving its
neighbours. Needs only torch (no Ray), so it runs wherever a trainer does.
"""

from __future__ import annotations

import torch

__all__ = ["CUDA_CONTEXT_RESERVE_BYTES", "cap_gpu_memory", "memory_cap"]

#: Per process, outside the allocator's cap: the CUDA context and cuDNN/cuBLAS workspaces.
CUDA_CONTEXT_RESERVE_BYTES = 768 * 2**20


def cap_gpu_memory(gpu_fraction: float) -> float | None:
    """Cap this process's CUDA allocator at its share of the GPU; the fraction set, or None.

    A no-op (None) on CPU, without a GPU share, or with a whole GPU (or more). The cap is the
    share of the device's memory less :data:`CUDA_CONTEXT_RESERVE_BYTES` for the context, which
    the allocator does not count, so that ``n`` trials of ``1/n`` GPU fit side by side.
    """
    if not 0.0 < gpu_fraction < 1.0 or not torch.cuda.is_available():
        return None
    device = torch.cuda.current_device()  # Ray's CUDA_VISIBLE_DEVICES: the trial's own GPU
    fraction = memory_cap(gpu_fraction, torch.cuda.get_device_properties(device).total_memory)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def memory_cap(gpu_fraction: float, total_bytes: int) -> float:
    """The allocator fraction for a ``gpu_fraction`` share of a device of ``total_bytes``.

    Raises:
        ValueError: the share is no bigger than the context reserve (too many trials per GPU).
    """
    usable = gpu_fraction * total_bytes - CUDA_CONTEXT_RESERVE_BYTES
    if usable <= 0:
        raise ValueError(
            f"a {gpu_fraction:g} GPU share is {gpu_fraction * total_bytes / 2**20:.0f} MiB of this "
            f"{total_bytes / 2**30:.1f} GiB GPU, not more than the {CUDA_CONTEXT_RESERVE_BYTES / 2**20:.0f} MiB "
            "a CUDA context takes: give each trial a larger share (--gpus-per-trial)"
        )
    return usable / total_bytes
