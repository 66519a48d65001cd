"""Reading a trainer checkpoint safely: tensors and plain data only.

Checkpoints come from shared storage (NFS, S3); a pickle that may hold arbitrary objects would run
code for whoever can write there. Every checkpoint read in ``model/`` and ``hpo/`` goes through
:func:`load_checkpoint`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["load_checkpoint"]


def _numpy_array_globals() -> list[Any]:
    """What unpickling a NumPy array needs: the trainer's checkpoint holds NumPy's RNG state
    (``np.random.get_state()``: a uint32 array), the only non-torch object in it."""
    core = getattr(np, "_core", None) or np.core  # NumPy 2 renamed numpy.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``, on the CPU.

    The restricted unpickler runs with NumPy arrays added to its allow-list (for the RNG state the
    trainer saves); anything else that is not tensors and plain containers is refused.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint (or one holding other objects), naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or ValueError by cause
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        # torch's long advice ends in the line that names what was refused.
        reason = next((line for line in lines if line.startswith("WeightsUnpickler error:")), lines[0])
        raise ValueError(f"{path} is not a checkpoint this project can load safely: {reason[:300]}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    return state
