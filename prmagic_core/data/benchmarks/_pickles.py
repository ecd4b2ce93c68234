"""Unpickling benchmark annotations without letting a file run code.

A pickle can name any importable callable and have it called while loading (``os.system`` is
the classic), so the split and annotation pickles of COCO-20i, LVIS-92i and PACO-Part are read
with an unpickler that resolves only the few globals those files need: builtin containers and
numbers, and what numpy uses to rebuild arrays, scalars and dtypes. Anything else is refused
before it is imported, let alone called.
"""
from __future__ import annotations

import pickle
from typing import BinaryIO

_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int", "float",
             "complex", "bool", "slice", "range")
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_FRAMES = ("numpy.core.numeric", "numpy._core.numeric")
ALLOWED_GLOBALS = frozenset(
    [(module, name) for module in ("builtins", "__builtin__") for name in _BUILTINS]
    + [("collections", "OrderedDict"), ("collections", "defaultdict"),
       # Protocol 2 pickles of bytes go through _codecs.encode(text, "latin1").
       ("_codecs", "encode"),
       ("numpy", "ndarray"), ("numpy", "dtype")]
    + [(module, name) for module in _NUMPY_MODULES for name in ("_reconstruct", "scalar")]
    + [(module, "_frombuffer") for module in _NUMPY_FRAMES]
)


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside :data:`ALLOWED_GLOBALS`."""


class DataUnpickler(pickle.Unpickler):
    """An unpickler that builds only containers, numbers, strings and numpy arrays."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedGlobal(f"it names {module}.{name}, not a container, number, string or numpy array; "
                                "refused before anything ran")
        return super().find_class(module, name)


def load_data(file: BinaryIO):
    """The object pickled in the binary ``file``, built from allowed globals only (else :class:`RefusedGlobal`)."""
    return DataUnpickler(file).load()
