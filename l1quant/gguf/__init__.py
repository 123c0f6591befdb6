"""The GGUF file format (``l1quant.gguf``): a hardened reader, the header model and its writer.

* ``reader`` -- bounded, validating reader for inspect, verify and quantize (hostile files are clean errors).
* ``header`` -- :class:`~l1quant.gguf.header.Header`: keys in order with their value types, tensor infos,
  alignment; built once per command (convert, quantize), read back from a file for verify.
* ``writer`` -- a ``Header`` serialised byte for byte as gguf-py's ``GGUFWriter`` writes it (bulk-packed arrays).

Nothing here imports ``l1quant.conversion``; publishing a file atomically is :mod:`l1quant.output`'s.

(Inside this package ``import gguf`` still means gguf-py: imports are absolute.)

Example:
    >>> from l1quant.gguf.reader import read_gguf
    >>> read_gguf.__name__
    'read_gguf'
"""
