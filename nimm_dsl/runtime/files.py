"""Writing result files without losing the old one: a temporary file in the same directory,
flushed to disk, then renamed over the target (a rename is atomic on POSIX), so a failed or
interrupted write leaves the previous file whole and a concurrent reader never sees half a file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path, data: bytes) -> Path:
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if isinstance(error, OSError) and error.filename is None:  # fsync, write: name the target
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    return path


def write_text_atomic(path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def json_safe(value):
    """`value` with NaN and infinities as None (JSON has neither) and numpy scalars as Python
    numbers, through dicts, lists and tuples; text is left as it is."""
    import math

    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) or type(value).__module__ == "numpy" and hasattr(value, "dtype"):
        if getattr(value, "ndim", 0):
            return json_safe(value.tolist())
        number = value.item() if hasattr(value, "item") else value
        if isinstance(number, float) and not math.isfinite(number):
            return None
        return number
    return value
