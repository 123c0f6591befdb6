"""Reading a Hugging Face checkpoint (``l1quant.source``): safetensors headers and lazy tensors, config.json, the hub.

* ``safetensors`` -- hardened header parser; tensors are (file, offset, dtype, shape) thunks read in row chunks.
* ``config`` -- typed ``ModelConfig`` from config.json (transformers 4 and 5 styles), validated.
* ``hub`` -- a Hugging Face repo id resolved to a local folder (huggingface_hub, offline-aware).

Example:
    >>> from l1quant.source.config import ModelConfig
    >>> ModelConfig.__name__
    'ModelConfig'
"""
