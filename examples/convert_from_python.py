"""Convert the bundled tiny qwen2 checkpoint to Q8_0 from Python and list what was written.

Run: python examples/convert_from_python.py [OUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import l1quant
from l1quant.gguf.reader import read_gguf

HERE = Path(__file__).parent
out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())

# Same parameters as `l1quant convert examples/tiny-qwen2 --type q8_0 -o OUT --threads 2`.
out = l1quant.convert(HERE / "tiny-qwen2", type="q8_0", output=out_dir / "tiny-q8_0.gguf", threads=2)
gf = read_gguf(out)
print(f"wrote {out} ({out.stat().st_size} bytes): {len(gf.tensors)} tensors, {len(gf.kv)} metadata keys")
print("pre-tokenizer:", gf.kv["tokenizer.ggml.pre"], " bos:", gf.kv["tokenizer.ggml.bos_token_id"])
for t in gf.tensors[:4]:
    print(f"  {t.name:28s} {t.ggml_type.name:5s} {list(t.shape)}")
