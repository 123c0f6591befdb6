"""Run a GGUF with an L1 thinking budget through llama-cpp-python (the run extra: pip install '.[run]').

Run: python examples/budgeted_run.py [MODEL.gguf]   (default: converts the bundled tiny model; its random
weights produce gibberish, but every count and flag below is real)
"""

import sys
import tempfile
from pathlib import Path

import l1quant

if len(sys.argv) > 1:
    model = Path(sys.argv[1])
else:
    model = l1quant.convert(Path(__file__).parent / "tiny-qwen2", "q8_0", Path(tempfile.mkdtemp()) / "tiny.gguf")

question = "What is the sum of the first 20 odd numbers?"
print(l1quant.l1_prompt(question, 32, max_mode=True))
result = l1quant.run(model, question, 32, mode="max", seed=0, max_tokens=48)
print(result.summary())
