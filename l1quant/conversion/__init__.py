"""Checkpoint (or GGUF) to GGUF (``l1quant.conversion``): plan, metadata, vocabulary, the streaming pipeline.

* ``plan`` -- every output tensor: source thunk, GGUF name, type, shape, offset; validated before a byte is written.
* ``mixes`` -- llama-quantize's per-tensor type rule for each file type (Q4_K_M, ...), as data.
* ``vocab`` / ``special_vocab`` -- the tokenizer export, as llama.cpp's converter writes it.
* ``pipeline`` -- threaded (tensor, row-chunk) jobs: read -> kernel -> pwrite at the planned offset.
* ``convert`` -- ``l1quant.convert``: checkpoint folder to GGUF in one pass.
* ``quantize`` -- ``l1quant.quantize``: an F32/F16/BF16 GGUF to any type, as llama-quantize does.
* ``write`` -- what convert and quantize share: ``WriteOptions``, the output-path rule, the atomic write.
* ``card`` -- the model card written beside a converted file (``convert --card``).

Example:
    >>> from l1quant.gguf.header import pad
    >>> pad(33)
    64
"""
