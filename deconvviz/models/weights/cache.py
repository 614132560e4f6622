"""The deconvviz cache folder and the hashes that pin what is kept in it.

Every file is written into the cache under a temporary name in its final folder and renamed when complete
(:mod:`deconvviz.io.atomic`), so an interrupted fetch or conversion never leaves a half-written file behind.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["cache_dir", "file_sha256", "state_dict_hash"]


def cache_dir() -> Path:
    r"""The deconvviz cache folder: ``$DECONVVIZ_CACHE``, else the platform's user cache folder.

    Linux and other Unix: ``$XDG_CACHE_HOME/deconvviz`` (default ``~/.cache/deconvviz``); macOS:
    ``~/Library/Caches/deconvviz``; Windows: ``%LOCALAPPDATA%\deconvviz\Cache``. The folder is created only
    when something is written into it.

    Returns:
        An absolute path.
    """
    env = os.environ.get("DECONVVIZ_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "deconvviz" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "deconvviz"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "deconvviz"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_dict_hash(state_dict: Mapping[str, Tensor]) -> str:
    """Content hash of a state dict: sha256 over each tensor's name, dtype, shape and bytes, in name order.

    It depends only on the tensors, not on how they were stored (file format, pickling, storage sharing,
    memory layout), so the same weights always give the same hash. Bytes are taken in the machine's order,
    which is little-endian on every platform PyTorch ships for.

    Args:
        state_dict: name -> tensor.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous().reshape(-1)
        header = f"{name}\0{tensor.dtype}\0{tuple(state_dict[name].shape)}\0{tensor.numel()}\0"
        digest.update(header.encode())
        if tensor.numel():
            digest.update(tensor.view(torch.uint8).numpy().data)
    return digest.hexdigest()
