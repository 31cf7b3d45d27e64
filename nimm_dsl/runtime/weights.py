"""Neural weights on disk: safetensors (never pickle) or plain JSON lists.

* `save_weights(path, {name: array})` / `load_weights(path)`: `.safetensors` files, or `.json`
  files holding `{name: [numbers]}`.
* FIT.json helpers: `weights_to_fit_entry(weights, fit_json_path, inline=None)` returns the JSON
  value to store under FIT.json's "weights" key — either the lists themselves
  `{"format": "inline", "values": {name: [...]}}` or a pointer to a safetensors file written
  beside FIT.json `{"format": "safetensors", "file": "<basename>"}`; `weights_from_fit_entry(entry,
  fit_json_path)` reads either form back. A pointer must be a plain file name in FIT.json's
  folder (no paths), so a FIT.json cannot make us read files elsewhere.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from ..errors import DataError

INLINE_LIMIT = 10_000  # total weights up to which FIT.json embeds lists when inline=None


def _as_flat(name: str, values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"neural weights {name!r}: expected a flat vector, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _validated(weights: Mapping, source: str) -> dict[str, np.ndarray]:
    out = {}
    for name, values in weights.items():
        if not isinstance(name, str) or not name:
            raise DataError(f"{source}: weight names must be non-empty strings, got {name!r}")
        try:
            arr = _as_flat(name, values)
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: a 400-digit integer
            raise DataError(f"{source}: neural weights {name!r} are not a flat list of numbers ({exc})") from None
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{source}: neural weights {name!r} contain NaN or inf")
        out[name] = arr
    return out


def save_weights(path, weights: Mapping[str, np.ndarray]) -> Path:
    """Write {neural name: flat float64 vector}; `.json` -> JSON lists, anything else -> safetensors."""
    path = Path(path)
    arrays = {name: _as_flat(name, w) for name, w in weights.items()}
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps({k: v.tolist() for k, v in arrays.items()}))
    else:
        from safetensors.numpy import save_file

        save_file(arrays, str(path), metadata={"format": "nimm_dsl neural weights"})
    return path


def load_weights(path) -> dict[str, np.ndarray]:
    """Read weights written by `save_weights`; DataError naming the file if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: weight file not found")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a JSON weight file ({exc})") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object {{name: [numbers]}}")
        return _validated(data, str(path))
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        data = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a safetensors weight file ({exc})") from None
    return _validated(data, str(path))


def weights_to_json(weights: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """{name: list of floats}, for embedding in JSON (float64 round-trips exactly through repr)."""
    return {name: _as_flat(name, w).tolist() for name, w in weights.items()}


def weights_from_json(data, source: str = "weights") -> dict[str, np.ndarray]:
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected an object {{neural name: [numbers]}}")
    return _validated(data, source)


def weights_to_fit_entry(weights: Mapping[str, np.ndarray], fit_json_path,
                         inline: Optional[bool] = None) -> dict:
    """The FIT.json value for these weights. inline=None embeds up to INLINE_LIMIT numbers and
    otherwise writes `<FIT stem>.weights.safetensors` beside FIT.json and points to it."""
    total = sum(np.size(w) for w in weights.values())
    if inline is None:
        inline = total <= INLINE_LIMIT
    if inline:
        return {"format": "inline", "values": weights_to_json(weights)}
    fit_json_path = Path(fit_json_path)
    target = fit_json_path.with_name(fit_json_path.stem + ".weights.safetensors")
    save_weights(target, weights)
    return {"format": "safetensors", "file": target.name}


def weights_from_fit_entry(entry, fit_json_path) -> dict[str, np.ndarray]:
    """Read back what `weights_to_fit_entry` produced (a bare {name: list} is accepted too)."""
    source = f"{fit_json_path}: weights"
    if not isinstance(entry, dict):
        raise DataError(f"{source}: expected an object")
    fmt = entry.get("format")
    if fmt is None:
        return weights_from_json(entry, source)
    if fmt == "inline":
        return weights_from_json(entry.get("values"), source)
    if fmt == "safetensors":
        name = entry.get("file")
        if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", ".."):
            raise DataError(f"{source}: 'file' must be a file name beside FIT.json, got {name!r}")
        return load_weights(Path(fit_json_path).with_name(name))
    raise DataError(f"{source}: unknown format {fmt!r} (expected 'inline' or 'safetensors')")
