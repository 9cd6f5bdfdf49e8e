"""C library functions that Python's os module lacks (malloc_trim,
renameat2), looked up once through ctypes. ctypes is loaded at the first
lookup only: the daemon asks after its start, the hook never asks."""

from __future__ import annotations

_found: dict = {}


def function(name: str):
    """libc's `name` as a ctypes function (int and bytes arguments, an int
    result), or None where it is missing (musl has no malloc_trim, glibc
    before 2.28 no renameat2) or ctypes cannot load it."""
    if name not in _found:
        try:
            import ctypes  # noqa: PLC0415

            _found[name] = getattr(ctypes.CDLL(None), name)
        except (ImportError, OSError, AttributeError):
            _found[name] = None
    return _found[name]
