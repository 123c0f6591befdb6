"""The extra-buffer-type probe's child process (``python -m l1quant.runtime.probe_child``), run by
:func:`l1quant.runtime.probe.probe`: a tiny Q8_0 and Q4_0 model is built and decoded with llama.cpp's extra buffer
types on; exit status 0 when that worked, death by a signal where the CPU cannot run them.

It is a program of its own, not imported by the runtime: it builds its model with :func:`l1quant.convert` and
:mod:`l1quant.testing`, which the runtime itself does not depend on (so conversion may import the runtime's
users, verify and the card, without an import circle).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from l1quant.conversion.convert import convert
from l1quant.runtime.crash import disable
from l1quant.runtime.llama import Model
from l1quant.runtime.probe import CRASH_ENV
from l1quant.testing import make_checkpoint


def main() -> None:
    """The probe itself: a tiny Q8_0 and Q4_0 model decoded with extra buffer types on; exit 0 when it worked."""
    disable()  # the parent must see the signal itself
    with tempfile.TemporaryDirectory(prefix="l1quant-probe-") as d:
        tok_dir = Path(d) / "tok"
        tok_dir.mkdir()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        vocab = {c: i for i, c in enumerate(sorted(alphabet))}
        merges = [("Ġ", "t"), ("h", "e")]  # a byte-level BPE needs some merges
        for a, b in merges:
            vocab[a + b] = len(vocab)
        vocab["<|endoftext|>"] = len(vocab)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(["<|endoftext|>"])
        tok.save(str(tok_dir / "tokenizer.json"))
        (tok_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
        # Rows a multiple of 32 and 64-wide blocks: shapes the AMX and repack buffer types accept.
        ckpt = make_checkpoint(Path(d) / "m", tokenizer_dir=tok_dir, hidden=128, layers=1, heads=4, kv_heads=2,
                               ff=256, vocab=len(vocab), tied=True, generation_config=None,
                               extra_config={"bos_token_id": None, "eos_token_id": len(vocab) - 1})
        for t in ("q8_0", "q4_0"):
            out = convert(ckpt, t, Path(d) / f"m-{t}.gguf", pre="qwen2", threads=1)
            with Model(out, n_ctx=64, n_threads=2, extra_bufts=True, seed=0) as m:
                crash_sig = os.environ.get(CRASH_ENV)
                if crash_sig:
                    os.kill(os.getpid(), signal.Signals[crash_sig.upper()])
                m.logits([1, 2, 3, 4, 5, 6, 7, 8], first=0)
                stream = m.generate([1, 2, 3], temperature=0, top_p=1.0, top_k=0, min_p=0.0)
                for _ in range(3):
                    next(stream)


if __name__ == "__main__":
    main()
