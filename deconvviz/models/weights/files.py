"""Reading a checkpoint file into a state dict: safetensors or ``torch.save``, anything else refused in one line.

``torch.load`` runs with ``weights_only=True``, so a file of pickled code is refused, never run; a TorchScript
archive, a truncated file or a pickled module are named for what they are, with how to save the weights.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from deconvviz.errors import DeconvVizError


class WeightsFormatError(DeconvVizError, ValueError):
    """A weight file that does not hold the layers a converter expects, or a checkpoint that does not fit."""


def first_line(text: str) -> str:
    """The first line of a message, stripped (for one-line errors that quote another)."""
    text = text.strip()
    return text.splitlines()[0] if text else ""


def read_checkpoint(path: Path) -> Any:
    """What a checkpoint file holds (a safetensors file by its header, else a ``torch.save`` file)."""
    return _read_safetensors(path) if _is_safetensors(path) else _read_torch(path)


def _is_safetensors(path: Path) -> bool:
    """True for a safetensors file: an 8-byte little-endian header length, then a JSON header."""
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size


def _read_safetensors(path: Path) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsFormatError(
            f"cannot read checkpoint {str(path)!r} as a safetensors file ({first_line(str(exc))[:160]}); "
            "save it with safetensors.torch.save_file(model.state_dict(), path)"
        ) from exc


def _read_torch(path: Path) -> Any:
    import argparse
    import contextlib

    # timm's training script stores its arguments (an argparse.Namespace, plain data) beside the weights
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    allowed = safe_globals([argparse.Namespace]) if safe_globals is not None else contextlib.nullcontext()
    if _torchscript(path):  # torch.load would warn, then refuse it in a paragraph
        raise WeightsFormatError(
            f"{str(path)!r} is a TorchScript archive, not a state dict; save its weights with "
            "torch.save(torch.jit.load(path).state_dict(), 'weights.pt') and give that file"
        )
    try:
        with allowed:
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for files it cannot unpickle safely
        if safe_globals is None and "argparse.Namespace" in str(exc):
            raise WeightsFormatError(
                f"cannot read checkpoint {str(path)!r}: it holds a training script's arguments (an "
                f"argparse.Namespace), which torch {torch.__version__} cannot unpickle safely; use torch 2.5 or "
                "newer, or save the weights alone with torch.save(model.state_dict(), path)"
            ) from exc
        raise WeightsFormatError(
            f"cannot read checkpoint {str(path)!r} as a state dict ({_torch_load_reason(exc)}); "
            "save it with torch.save(model.state_dict(), path)"
        ) from exc


def _torchscript(path: Path) -> bool:
    """Whether a file is a TorchScript archive (``torch.jit.save``): a zip holding ``constants.pkl`` and ``code/``."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _torch_load_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words (torch's own text is a paragraph)."""
    text = str(exc)
    if "PytorchStreamReader" in text or "central directory" in text or isinstance(exc, EOFError):
        return "the file is cut short or corrupt: not a whole torch.save file"
    if "Weights only load failed" in text:
        what = (text.partition("WeightsUnpickler error:")[2].strip().splitlines() or [""])[0].strip()
        named = re.search(r"Unsupported (?:global: GLOBAL|class) ([\w.]+)", what)
        if named:
            return f"it holds pickled objects other than tensors ({named.group(1)}), which are not read"
        return f"not a torch.save file of tensors{f' ({what[:80]})' if what else ''}"
    return first_line(text)[:160]


__all__ = ["WeightsFormatError", "first_line", "read_checkpoint"]
