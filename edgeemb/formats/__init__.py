"""Quantisation formats for embedding rows, registered by name (the type is `formats.base`).

Every module of this package is imported here, and each format registers itself by being
declared, so a new format is one new file in this folder.
"""

import importlib
import pkgutil

from edgeemb.formats.base import (
    MAX_WIDTH,
    Arrays,
    QuantFormat,
    format_from_spec,
    get_format,
    names,
    onnx_formats,
    reciprocal_or_zero,
)

__all__ = [
    "MAX_WIDTH",
    "Arrays",
    "QuantFormat",
    "format_from_spec",
    "get_format",
    "names",
    "onnx_formats",
    "reciprocal_or_zero",
]

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "kernels"):  # kernels: numba, loaded by the first lookup instead
        importlib.import_module(f"{__name__}.{_module.name}")
