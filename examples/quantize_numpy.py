"""Quantize a numpy array with l1quant.kernels (pure block math: numpy in, GGUF bytes out).

Run: python examples/quantize_numpy.py
"""

import numpy as np

from l1quant.kernels import QUANT_TYPES, get_quant_type

rng = np.random.default_rng(0)
x = rng.standard_normal((4, 256), dtype=np.float32) * 0.02  # 4 rows of 256 values (8 Q8_0 blocks each)

ones = np.ones(x.shape[1], dtype=np.float32)  # per-column importance weights (an imatrix's means); here uniform

for name in QUANT_TYPES:
    qt = get_quant_type(name)
    # IQ1_S, IQ2_XXS, IQ2_XS ... cannot be made without importance weights (ggml refuses too)
    data = qt.quantize(x, imatrix=ones if qt.needs_imatrix else None)  # uint8, shape (rows, qt.row_nbytes(256))
    back = qt.dequantize(data, x.shape)
    rel = float(np.linalg.norm(back - x) / np.linalg.norm(x))
    print(f"{qt.name:5s} block={qt.block_size:2d} bytes/block={qt.type_size:2d} "
          f"-> {data.nbytes:5d} bytes, relative RMSE {rel:.2e}")

# bf16 sources are raw uint16 bits (numpy has no bfloat16): the kernels decode them exactly.
bf16_bits = (x.view(np.uint32) >> 16).astype(np.uint16)
q = get_quant_type("q8_0").quantize(bf16_bits)
print("Q8_0 from raw bf16 bits:", q.shape, q.dtype)
