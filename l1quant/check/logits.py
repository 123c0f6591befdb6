"""Logit checks: KL divergence of the file against its source through the reference forward pass and llama.cpp."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from l1quant.check.fidelity import _to_f32
from l1quant.check.report import FAIL, PASS, SKIP, Check
from l1quant.errors import L1QuantError
from l1quant.filetypes import MIXES, FileType, file_type_of
from l1quant.gguf.reader import (  # one quoting/type-naming rule for reader and verifier
    GGUFFile,
)

#: Mean KL divergence limit (nats/token) of the logit check per GGUF file type, reference forward and llama.cpp
#: alike: each file type's own (:attr:`l1quant.filetypes.Mix.logit_kld_limit`, where the measurements are).
LOGIT_KLD_LIMITS: dict[str, float] = {m.name: m.logit_kld_limit for m in MIXES.values()}


# --------------------------------------------------------------------------------------------------- logits


def _tokenize(source: Path, text: str, n_tokens: int) -> list[int]:
    from l1quant.conversion.vocab import tokenizer_from_text
    from l1quant.errors import TokenizerError, read_text

    path = source / "tokenizer.json"
    tok = tokenizer_from_text(path, read_text(path, TokenizerError))
    return list(tok.encode(text).ids[:n_tokens])


def _logit_dict(rep: Any, limit: float) -> dict[str, Any]:
    d = dict(rep.to_dict())
    d["limit"] = limit
    d["passed"] = bool(rep.mean_kld <= limit)
    return d


def _run_logits(gf: GGUFFile, prep: Any, source: Path, text: str, n_tokens: int, runtime: str | None,
                threads: int, ft: FileType | None = None
                ) -> tuple[list[Check], dict[str, Any] | None, dict[str, Any] | None]:
    from l1quant.arch import get_arch
    from l1quant.check.forward import Hparams, compare_logits, decoder_logits
    from l1quant.check.structure import config_from_gguf

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
        return _to_f32(pt.source.read_rows(0, pt.source.n_rows)).reshape(pt.shape)

    def gguf_weight(name: str) -> np.ndarray:
        return gf.read_tensor_f32(gf.tensor(name))

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
        # the file's own hparams, read back through the same key table the converter writes with
        hp_file = Hparams.from_config(config_from_gguf(gf, arch), arch)
        test = decoder_logits(gguf_weight, hp_file, toks)
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
        runtime_d = _run_llama_cpp(gf, text, toks, ref, limit, ftype, threads, checks)
    return checks, logits_d, runtime_d


def _run_llama_cpp(gf: GGUFFile, text: str, toks: list[int], ref: np.ndarray, limit: float, ftype: str,
                   threads: int, checks: list[Check]) -> dict[str, Any] | None:
    from l1quant.check.forward import compare_logits

    try:
        import llama_cpp
    except ImportError:
        # verify() refuses this up front; kept as a failure (never a skip) for any other caller.
        from l1quant.l1.runner import RUN_INSTALL_HINT

        checks.append(Check("runtime", FAIL, f"llama-cpp-python is not installed ({RUN_INSTALL_HINT}); "
                                             "the llama.cpp logit check could not run"))
        return None
    try:
        llm = llama_cpp.Llama(model_path=str(gf.path), n_ctx=max(64, len(toks)), n_batch=max(64, len(toks)),
                              n_ubatch=max(64, len(toks)), logits_all=True, n_threads=threads, verbose=False)
    except Exception as e:  # noqa: BLE001 - llama.cpp reports load failures as ValueError/RuntimeError
        checks.append(Check("runtime", FAIL, f"llama.cpp cannot load the file: {str(e).splitlines()[0]}"))
        return None
    try:
        rt_ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)[:len(toks)]
        if list(rt_ids) != toks:
            i = next((i for i, (a, b) in enumerate(zip(rt_ids, toks)) if a != b), min(len(rt_ids), len(toks)))
            checks.append(Check("runtime.tokenize", FAIL,
                                f"llama.cpp tokenizes the text differently from tokenizer.json from position {i} "
                                f"(llama.cpp {list(rt_ids[i:i + 3])}, tokenizers {toks[i:i + 3]})"))
        else:
            checks.append(Check("runtime.tokenize", PASS,
                                f"llama.cpp tokenization equals tokenizer.json on the first {len(toks)} tokens"))
        llm.reset()
        llm.eval(toks)
        scores = np.array(llm.scores[: len(toks)], dtype=np.float32)
    finally:
        close = getattr(llm, "close", None)
        if close is not None:
            close()
    rep = compare_logits(ref, scores, toks)
    d = _logit_dict(rep, limit)
    msg = f"llama.cpp vs source: {rep.summary()} (limit mean KLD {limit:g} for {ftype})"
    checks.append(Check("runtime", PASS if d["passed"] else FAIL,
                        ("" if d["passed"] else f"mean KLD {rep.mean_kld:.4g} > {limit:g}: ") + msg))
    return d
