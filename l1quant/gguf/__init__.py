"""The GGUF file format (``l1quant.gguf``): a hardened reader and the streaming, atomic writer.

* ``reader`` -- bounded, validating reader for inspect, verify and quantize (hostile files are clean errors).
* ``writer`` -- the header through gguf-py's ``GGUFWriter`` (bulk-packed arrays), the atomic temporary output,
  positional writes.

(Inside this package ``import gguf`` still means gguf-py: imports are absolute.)

Example:
    >>> from l1quant.gguf.reader import read_gguf
    >>> read_gguf.__name__
    'read_gguf'
"""
