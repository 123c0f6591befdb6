"""Logit checks: KL divergence of the file against its source through the reference forward pass and llama.cpp.

The logits come from :mod:`l1quant.evaluate` (the numpy forward pass, and llama.cpp through :mod:`l1quant.runtime`)
and are compared with :func:`l1quant.evaluate.metrics.compare_logits`; this module holds verify's checks and limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from l1quant.arch import get_arch
from l1quant.check.fidelity import to_f32
from l1quant.check.report import FAIL, PASS, SKIP, Check
from l1quant.errors import L1QuantError
from l1quant.evaluate.forward import Hparams, decoder_logits
from l1quant.evaluate.metrics import compare_logits
from l1quant.evaluate.sources import NumpyLogits, tokenizer_json_ids
from l1quant.filetypes import MIXES, FileType, file_type_of
from l1quant.gguf.reader import (  # one quoting/type-naming rule for reader and verifier
    GGUFFile,
)
from l1quant.runtime import RUN_INSTALL_HINT, Model, available, extra_bufts

#: Mean KL divergence limit (nats/token) of the logit check per GGUF file type, reference forward and llama.cpp
#: alike: each file type's own (:attr:`l1quant.filetypes.Mix.logit_kld_limit`, where the measurements are).
LOGIT_KLD_LIMITS: dict[str, float] = {m.name: m.logit_kld_limit for m in MIXES.values()}


# --------------------------------------------------------------------------------------------------- logits


def _tokenize(source: Path, text: str, n_tokens: int) -> list[int]:
    return tokenizer_json_ids(source / "tokenizer.json", text)[:n_tokens]


def _logit_dict(rep: Any, limit: float) -> dict[str, Any]:
    d = dict(rep.to_dict())
    d["limit"] = limit
    d["passed"] = bool(rep.mean_kld <= limit)
    return d


def run_logits(gf: GGUFFile, prep: Any, source: Path, text: str, n_tokens: int, runtime: str | None,
                threads: int, no_repack: bool = False, ft: FileType | None = None
                ) -> tuple[list[Check], dict[str, Any] | None, dict[str, Any] | None]:
    checks: list[Check] = []
    ft = ft or file_type_of(gf)
    ftype = ft.label or "F32"
    limit = ft.logit_kld_limit
    toks = _tokenize(source, text, n_tokens)
    if len(toks) < 2:
        checks.append(Check("logits", FAIL, f"the text gives {len(toks)} token(s); need at least 2"))
        return checks, None, None
    planned = {pt.name: pt for pt in prep.plan.tensors}

    def src_weight(name: str) -> np.ndarray:
        pt = planned[name]  # KeyError for an absent tensor (tied output), as decoder_logits expects
        result: np.ndarray = to_f32(pt.source.read_rows(0, pt.source.n_rows)).reshape(pt.shape)
        return result

    try:
        # the source runs through the plan's sources: in the file's layout (llama's Q/K rows permuted, rope_freqs)
        arch = get_arch(prep.cfg.architecture)
        hp_src = Hparams.from_config(prep.cfg, arch)
        ref = decoder_logits(src_weight, hp_src, toks)
    except NotImplementedError as e:
        checks.append(Check("logits", SKIP, str(e)))
        return checks, None, None
    logits_d = None
    try:
        # the file as a logit source: its own hparams and dequantized weights, run as the source's architecture
        test = NumpyLogits(gf.path, len(toks), threads, gf=gf, arch=arch).sequence_logits(toks)
        rep = compare_logits(ref, test, toks)
        logits_d = _logit_dict(rep, limit)
        msg = (f"weights-only KLD (numpy forward, every position; for llama-perplexity's numbers use l1quant "
               f"compare): {rep.summary()} (limit mean KLD {limit:g} for {ftype})")
        checks.append(Check("logits", PASS if logits_d["passed"] else FAIL,
                            ("" if logits_d["passed"] else f"mean KLD {rep.mean_kld:.4g} > {limit:g}: ") + msg))
    except NotImplementedError as e:
        checks.append(Check("logits", SKIP, str(e)))
    except KeyError as e:
        checks.append(Check("logits", FAIL, f"the file lacks tensor {e.args[0]!r} needed by the reference forward"))
    except L1QuantError as e:
        checks.append(Check("logits", FAIL, f"the file's weights cannot run the reference forward: {e}"))

    runtime_d = None
    if runtime is not None:
        runtime_d = _run_llama_cpp(gf, text, toks, ref, limit, ftype, threads, checks, no_repack)
    return checks, logits_d, runtime_d


def _run_llama_cpp(gf: GGUFFile, text: str, toks: list[int], ref: np.ndarray, limit: float, ftype: str,
                   threads: int, checks: list[Check], no_repack: bool = False) -> dict[str, Any] | None:
    if not available():
        # verify() refuses this up front; kept as a failure (never a skip) for any other caller.
        checks.append(Check("runtime", FAIL, f"llama-cpp-python is not installed ({RUN_INSTALL_HINT}); "
                                             "the llama.cpp logit check could not run"))
        return None
    n = max(64, len(toks))
    try:
        llm = Model(gf.path, n_ctx=n, n_batch=n, n_ubatch=n, logits_all=True, n_threads=threads,
                    extra_bufts=extra_bufts(no_repack))
    except L1QuantError as e:
        checks.append(Check("runtime", FAIL, f"llama.cpp cannot load the file: {str(e).splitlines()[0]}"))
        return None
    try:
        rt_ids = llm.tokenize(text, add_bos=True, special=False)[:len(toks)]
        if list(rt_ids) != toks:
            i = next((i for i, (a, b) in enumerate(zip(rt_ids, toks)) if a != b), min(len(rt_ids), len(toks)))
            checks.append(Check("runtime.tokenize", FAIL,
                                f"llama.cpp tokenizes the text differently from tokenizer.json from position {i} "
                                f"(llama.cpp {list(rt_ids[i:i + 3])}, tokenizers {toks[i:i + 3]})"))
        else:
            checks.append(Check("runtime.tokenize", PASS,
                                f"llama.cpp tokenization equals tokenizer.json on the first {len(toks)} tokens"))
        scores = np.array(llm.logits(toks, first=0), dtype=np.float32)
    finally:
        llm.close()
    rep = compare_logits(ref, scores, toks)
    d = _logit_dict(rep, limit)
    msg = f"llama.cpp vs source: {rep.summary()} (limit mean KLD {limit:g} for {ftype})"
    checks.append(Check("runtime", PASS if d["passed"] else FAIL,
                        ("" if d["passed"] else f"mean KLD {rep.mean_kld:.4g} > {limit:g}: ") + msg))
    return d
