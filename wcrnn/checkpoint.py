"""Checkpoints: model, optimiser, scheduler, epoch, RNG state, config and history in one file.

Loaded with `torch.load(..., weights_only=True)`: a checkpoint holds tensors and plain data
only, so a file carrying a pickled object is refused instead of executed.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path

import torch

from .errors import CheckpointError

CHECKPOINT_FORMAT = 1
CHECKPOINT_FILE = "checkpoint.pt"


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate()}


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write atomically (temporary file, then rename), so a crash never leaves half a checkpoint."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".pt":
        path = path / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, temporary)
    os.replace(temporary, path)
    return path


def _first_line(error: BaseException) -> str:
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def _unpickling_reason(error: BaseException) -> str:
    """What torch's weights-only unpickler objected to, without its advice to disable the check."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    _, marker, detail = text.partition("WeightsUnpickler error:")
    detail = detail.strip().splitlines()[0].strip() if marker and detail.strip() else ""
    return detail.split(". ")[0].rstrip(".") or _first_line(error)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint file (or the checkpoint.pt inside a directory) safely."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _unpickling_reason(error)
        if "GLOBAL" in reason or "allowlisted" in reason:  # a pickled object: never built
            raise CheckpointError(f"{path}: refused, it holds more than weights and plain data "
                                  f"(weights_only=True): {reason}") from None
        # e.g. "Unsupported operand 110" or "invalid load key": garbage or a foreign pickle
        raise CheckpointError(f"{path}: unreadable checkpoint (corrupt or not a checkpoint file: "
                              f"{reason})") from None
    except Exception as error:  # truncated or not a torch file at all
        raise CheckpointError(f"{path}: unreadable checkpoint (corrupt or not a checkpoint file: "
                              f"{type(error).__name__}: {_first_line(error)})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "model" not in payload:
        raise CheckpointError(f"{path}: not a wcrnn checkpoint (format {CHECKPOINT_FORMAT} with a model state)")
    _drop_retired_fields(payload.get("config"))
    return payload


def _drop_retired_fields(config) -> None:
    """Linear RNN checkpoints written before 2026-11-24 carry `model.radius`, an initialisation
    setting since replaced by r_min/r_max: the saved weights define the model, so it is dropped."""
    model = config.get("model") if isinstance(config, dict) else None
    if isinstance(model, dict) and model.get("name") == "linear":
        model.pop("radius", None)
