"""Build ``tiny256``: the bundled tiny checkpoint at width 256, wide enough for every K-quant.

``examples/tiny-qwen2`` is 32 wide, so every K-quant tensor (blocks of 256) falls back to another type and a
Q4_K_M file of it holds no Q4_K tensor. This one has hidden 256, ff 512, 2 layers, 4 heads (2 kv heads) and the
same real DeepSeek-R1-Distill tokenizer, with deterministic random bf16 weights (seed 0). It is built rather
than shipped: at width 256 the 151936-token embedding and output matrices are 78 MB each.

Usage:
    python examples/make_tiny256.py [OUT_DIR]        # default: ./tiny256 (161 MB, a few seconds)
    l1quant convert tiny256 --type q4_k_m -o tiny-Q4_K_M.gguf
"""

from __future__ import annotations

import sys
from pathlib import Path

from l1quant.testing import make_checkpoint

HERE = Path(__file__).resolve().parent


def main(out: str = "tiny256") -> Path:
    # make_checkpoint's defaults otherwise (untied, R1's generation_config): the README's compare table is of it
    return make_checkpoint(out, tokenizer_dir=HERE / "tiny-qwen2", hidden=256, layers=2, heads=4, kv_heads=2,
                           ff=512)


if __name__ == "__main__":
    d = main(*sys.argv[1:2])
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"{d}: width 256 qwen2 checkpoint, {size / 1e6:.1f} MB")
