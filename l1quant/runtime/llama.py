"""The only module that imports llama-cpp-python: a GGUF loaded in llama.cpp, through its C API.

:class:`Model` offers what l1quant needs and nothing more: load with llama.cpp's context parameters, tokenize and
detokenize, the logits of a batch, sampling after a token sequence (reusing the evaluated prefix), and ggml's
evaluation callback (``cb_eval``) for activation statistics. The C API is used directly rather than
llama-cpp-python's ``Llama`` class, because ``Llama`` cannot turn off llama.cpp's extra buffer types
(``use_extra_bufts``, llama.cpp's ``-nr/--no-repack``), which some AMX machines need
(:mod:`l1quant.runtime.probe`), and cannot set ``cb_eval``.

Every call into llama.cpp runs inside :func:`l1quant.runtime.crash.guard`: a crash is one line naming the model
and the signal.

Example:
    >>> with Model("m-Q8_0.gguf", n_ctx=256, n_threads=2, seed=0) as m:            # doctest: +SKIP
    ...     toks = m.tokenize("Hello", add_bos=True, special=False)
    ...     m.logits(toks).shape
    (2, 151936)
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from l1quant.errors import InputError, RuntimeMissingError, VerifyError
from l1quant.runtime.crash import guard
from l1quant.runtime.probe import extra_bufts_work

__all__ = ["RUN_INSTALL_HINT", "EvalTensor", "Model", "available", "build_id", "lib"]

#: How to get llama-cpp-python, for every message that needs it. l1quant installs from a checkout (it is not on
#: PyPI), so "pip install 'l1quant[run]'" would look for a package that is not there: name the pinned runtime.
RUN_INSTALL_HINT = ("pip install 'llama-cpp-python==0.3.36' (l1quant's run extra; in a checkout: pip install '.[run]'; "
                    "it compiles llama.cpp: ~13 min on 2 cores, silent unless pip -v)")

_state: dict[str, Any] = {}


def lib() -> Any:
    """The ``llama_cpp`` module, its backend initialised and its log lines dropped (unless
    ``L1QUANT_LLAMA_LOG=1``). Raises :class:`~l1quant.errors.RuntimeMissingError` when it is not installed."""
    try:
        import llama_cpp
    except ImportError:
        raise RuntimeMissingError(f"llama-cpp-python is not installed: {RUN_INSTALL_HINT}") from None
    if _state.get("lib") is not llama_cpp:
        @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]  # a ctypes CFUNCTYPE: unannotated
        def _drop(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            return None

        _state["log"] = _drop  # the C side keeps only the pointer: keep the object alive
        llama_cpp.llama_backend_init()
        _state["lib"] = llama_cpp
    if os.environ.get("L1QUANT_LLAMA_LOG") != "1":
        # set again on every use: llama-cpp-python's Llama(...) installs its own (printing) callback in the same
        # process, and llama.cpp's log callback is one global
        llama_cpp.llama_log_set(_state["log"], ctypes.c_void_p(0))
    return llama_cpp


def available() -> bool:
    """Whether llama-cpp-python can be imported.

    Example:
        >>> isinstance(available(), bool)
        True
    """
    try:
        lib()
    except RuntimeMissingError:
        return False
    return True


def build_id() -> str:
    """What identifies the llama.cpp build: llama-cpp-python's version and its shared libraries (name, size and
    modification time), so a rebuild or reinstall is a new build.

    Example:
        >>> not available() or build_id().startswith("llama-cpp-python ")
        True
    """
    lc = lib()
    root = Path(lc.__file__).resolve().parent
    parts = [f"llama-cpp-python {getattr(lc, '__version__', '?')}", str(root)]
    for p in sorted((root / "lib").glob("*")) if (root / "lib").is_dir() else []:
        st = p.stat()
        parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


# ggml.h's struct ggml_tensor (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10, GGML_MAX_NAME 64).
class _GGMLTensor(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p)]


_GGML_TYPE_F32 = 0


def _ggml_base() -> Any:
    """ggml's base library as llama-cpp-python loaded it (ctypes), with the few functions the evaluation callback
    needs: ``ggml_op_name``, ``ggml_backend_buffer_is_host``, ``ggml_backend_tensor_get``."""
    if "ggml" not in _state:
        lc = lib()
        root = Path(lc.__file__).resolve().parent / "lib"
        cands = sorted(root.glob("libggml-base.*")) if root.is_dir() else []
        names = [str(c) for c in cands] + ["libggml-base.so", "libggml-base.dylib", "ggml-base.dll"]
        g = None
        for n in names:
            try:
                g = ctypes.CDLL(n)
                break
            except OSError:
                continue
        if g is None:
            raise RuntimeMissingError(f"ggml's base library not found beside llama-cpp-python ({root})")
        g.ggml_op_name.restype = ctypes.c_char_p
        g.ggml_op_name.argtypes = [ctypes.c_int]
        g.ggml_backend_buffer_is_host.restype = ctypes.c_bool
        g.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
        g.ggml_backend_tensor_get.restype = None
        g.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        _state["ggml"] = g
        _state["ops"] = {}
    return _state["ggml"]


def _op_name(op: int) -> str:
    ops: dict[int, str] | None = _state.get("ops")
    if ops is None:
        _ggml_base()
        ops = _state["ops"]
    if op not in ops:
        ops[op] = _state["ggml"].ggml_op_name(op).decode()
    return ops[op]


@dataclass(frozen=True)
class EvalTensor:
    """A tensor of the graph llama.cpp evaluates, as ggml's evaluation callback sees it.

    ``name`` is ggml's tensor name (``ffn_inp-0``, ``attn_norm-3``, ``result_output``; weights by their GGUF
    names), ``shape`` is ggml's ``ne`` (innermost first, trailing 1s dropped), ``type`` the ggml type number,
    ``src_names`` the names of the operation's inputs (a matrix product's weight first), ``op`` ggml's operation
    name (``ggml_op_name``: ``MUL_MAT``, ``MUL_MAT_ID``, ``NONE`` for a leaf).
    """

    name: str
    shape: tuple[int, ...]
    type: int
    src_names: tuple[str, ...]
    _ptr: int
    op: str = ""

    @property
    def srcs(self) -> tuple[EvalTensor, ...]:
        """The operation's inputs (``src[0..]``, the non-null ones in order)."""
        t = _GGMLTensor.from_address(self._ptr)
        return tuple(_eval_tensor(s) for s in t.src if s)

    @property
    def data_address(self) -> int:
        """Where the values live (ggml's ``data`` pointer; 0 when unallocated): with the name, what identifies
        one tensor's values within one graph evaluation."""
        return int(_GGMLTensor.from_address(self._ptr).data or 0)

    @property
    def strides(self) -> tuple[int, ...]:
        """ggml's ``nb`` in bytes, for the dimensions of ``shape``."""
        t = _GGMLTensor.from_address(self._ptr)
        return tuple(int(t.nb[i]) for i in range(len(self.shape)))

    def to_numpy(self, copy: bool = True) -> np.ndarray:
        """A float32 (or, for an I32 tensor, int32) copy of the values, numpy shape ``shape[::-1]``, read as
        llama-imatrix reads a tensor: straight from host memory when its buffer is a host buffer
        (``ggml_backend_buffer_is_host``), else through ggml's backend API (``ggml_backend_tensor_get``: a GPU
        build works too); rows may be strided (``nb``), elements must be contiguous. Only valid when the callback is
        not merely asked (``ask`` False). ``copy=False`` returns, for a tensor in host memory, a read-only view of
        ggml's memory instead: valid only until the callback returns (ggml reuses it).

        Raises ValueError for other types, elements that are not contiguous, or a tensor without data."""
        t = _GGMLTensor.from_address(self._ptr)
        dtype = {_GGML_TYPE_F32: np.float32, _GGML_TYPE_I32: np.int32}.get(t.type)
        if dtype is None or t.nb[0] != 4 or not (t.data or t.buffer):
            raise ValueError(f"{self.name}: not an F32/I32 tensor with contiguous elements")
        ne = [int(x) for x in t.ne]
        if min(ne) <= 0:
            return np.zeros(self.shape[::-1], dtype)
        nbytes = 4 + sum((ne[i] - 1) * int(t.nb[i]) for i in range(4))  # ggml_nbytes
        g = _ggml_base()
        if t.buffer and not g.ggml_backend_buffer_is_host(t.buffer):
            raw = np.empty(nbytes, np.uint8)
            g.ggml_backend_tensor_get(self._ptr, raw.ctypes.data, 0, nbytes)
        else:
            raw = np.ctypeslib.as_array(ctypes.cast(t.data, ctypes.POINTER(ctypes.c_uint8)), shape=(nbytes,))
        view = np.ndarray(tuple(ne[::-1]), dtype=dtype, buffer=raw, strides=tuple(int(t.nb[i]) for i in range(4))[::-1])
        if not copy:
            view.flags.writeable = False
            result: np.ndarray = view.reshape(self.shape[::-1])
            return result
        return np.array(view, order="C").reshape(self.shape[::-1])  # a copy: ggml reuses the memory


_GGML_TYPE_I32 = 26


def _eval_tensor(ptr: int) -> EvalTensor:
    t = _GGMLTensor.from_address(ptr)
    ne = list(t.ne)
    while len(ne) > 1 and ne[-1] == 1:
        ne.pop()
    srcs = tuple(_GGMLTensor.from_address(s).name.decode("utf-8", "replace") for s in t.src if s)
    return EvalTensor(t.name.decode("utf-8", "replace"), tuple(int(x) for x in ne), int(t.type), srcs, ptr,
                      _op_name(int(t.op)))


#: ``cb_eval(tensor, ask) -> bool``: asked first (``ask`` True) whether the tensor is wanted, then called again
#: after it was computed (``ask`` False) for the wanted ones; return True to go on (llama.cpp's rule).
EvalCallback = Callable[[EvalTensor, bool], bool]

_FLASH = {"auto": "LLAMA_FLASH_ATTN_TYPE_AUTO", True: "LLAMA_FLASH_ATTN_TYPE_ENABLED",
          False: "LLAMA_FLASH_ATTN_TYPE_DISABLED"}


class Model:
    """One GGUF in llama.cpp: the model and (unless ``vocab_only``) one context of ``n_ctx`` tokens.

    Parameters are llama.cpp's: ``n_threads`` (default: half the cores for generation, all for batches, as
    llama-cpp-python), ``n_gpu_layers`` (-1 all, default 0), ``n_batch`` (logical batch, default
    ``min(n_ctx, 512)``), ``n_ubatch`` (physical, default ``min(n_batch, 512)``), ``seed`` (the sampler's; None:
    random), ``flash_attn`` (``"auto"``, True, False), ``extra_bufts`` (llama.cpp's ``use_extra_bufts``,
    weight repacking: None = what :func:`l1quant.runtime.probe.extra_bufts_work` found for this machine; False
    is ``--no-repack``), ``cb_eval`` (see :data:`EvalCallback`), ``n_seq_max`` (sequences one batch may hold, see
    :meth:`decode_batch`). ``logits_all`` makes :meth:`logits` default to
    every position (``first=0``); otherwise only the last row is kept.

    Raises :class:`~l1quant.errors.RuntimeMissingError` without llama-cpp-python, :class:`InputError` when the
    file is missing or llama.cpp cannot load it.
    """

    def __init__(self, path: str | os.PathLike[str], *, n_ctx: int = 512, n_threads: int | None = None,
                 n_gpu_layers: int | None = None, n_batch: int | None = None, n_ubatch: int | None = None,
                 seed: int | None = None, logits_all: bool = False, flash_attn: bool | str = False,
                 extra_bufts: bool | None = None, vocab_only: bool = False,
                 cb_eval: EvalCallback | None = None, n_seq_max: int = 1) -> None:
        lc = lib()
        self.lc = lc
        self.path = Path(path)
        self.label = str(path)
        self.model: Any = None
        self.ctx: Any = None
        self.batch: Any = None
        self._sampler: Any = None
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such GGUF file")
        if extra_bufts is None and not vocab_only:
            extra_bufts = extra_bufts_work(build_id())
        self.extra_bufts = bool(extra_bufts) if extra_bufts is not None else True
        mp = lc.llama_model_default_params()
        mp.vocab_only = vocab_only
        mp.n_gpu_layers = 0 if n_gpu_layers is None else (0x7FFFFFFF if n_gpu_layers == -1 else n_gpu_layers)
        mp.use_extra_bufts = self.extra_bufts
        with guard(self.label, "load"):
            self.model = lc.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise InputError(f"{self.path}: llama.cpp could not load the model")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(lc.llama_vocab_bos(self.vocab))
        self.eos = int(lc.llama_vocab_eos(self.vocab))
        self.add_eos = bool(lc.llama_vocab_get_add_eos(self.vocab))
        #: llama.cpp's ``llama_vocab_type`` (``LLAMA_VOCAB_TYPE_BPE`` is 2): which tokenizer the vocabulary uses
        self.vocab_type = int(lc.llama_vocab_type(self.vocab))
        self.n_ctx = n_ctx
        self.seed = lc.LLAMA_DEFAULT_SEED if seed is None else int(seed) % 2**32
        self.logits_all = logits_all
        self._past: list[int] = []
        if vocab_only:
            return
        cp = lc.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = self.n_batch = n_batch or min(n_ctx, 512)
        cp.n_ubatch = n_ubatch or min(self.n_batch, 512)
        cp.n_seq_max = n_seq_max  # with the KV cache per sequence (kv_unified off), as llama.cpp's tools
        cores = os.cpu_count() or 1
        cp.n_threads = n_threads or max(cores // 2, 1)
        cp.n_threads_batch = n_threads or cores
        cp.flash_attn_type = getattr(lc, _FLASH[flash_attn])
        cp.no_perf = True
        self._cb_error: BaseException | None = None
        if cb_eval is not None:
            def _cb(t: int, ask: bool, user_data: Any) -> bool:
                # an exception must not cross the C boundary (ctypes would print it and return garbage): keep it,
                # stop the graph, and raise it when llama_decode returns
                try:
                    return bool(cb_eval(_eval_tensor(t), bool(ask)))
                except BaseException as e:  # noqa: BLE001
                    self._cb_error = e
                    return False

            self._cb = lc.ggml_backend_sched_eval_callback(_cb)  # kept alive with the context
            cp.cb_eval = self._cb
            cp.cb_eval_user_data = None
        with guard(self.label, "context"):
            self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            self.close()
            raise InputError(f"{self.path}: llama.cpp cannot create a {n_ctx}-token context")
        self.batch = lc.llama_batch_init(self.n_batch, 0, 1)

    # ------------------------------------------------------------------------------------------- vocabulary

    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        """``llama_tokenize``: ``add_bos`` adds the vocabulary's BOS when it asks for one (``add_special``);
        ``special`` parses special-token text (``<think>``) as the special token."""
        data = text.encode("utf-8")
        n = len(data) + 16
        buf = (self.lc.llama_token * n)()
        got = self.lc.llama_tokenize(self.vocab, data, len(data), buf, n, add_bos, special)
        if got < 0:
            n = -got
            buf = (self.lc.llama_token * n)()
            got = self.lc.llama_tokenize(self.vocab, data, len(data), buf, n, add_bos, special)
        return list(buf[:got])

    def token_bytes(self, token: int, *, special: bool = True) -> bytes:
        """The bytes of one token (``llama_token_to_piece``; ``special`` renders special tokens' text)."""
        buf = ctypes.create_string_buffer(64)
        n = self.lc.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.lc.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return bytes(buf.raw[:n])

    def detokenize(self, tokens: Sequence[int], *, special: bool = True) -> bytes:
        """The bytes of a token sequence, token by token."""
        return b"".join(self.token_bytes(t, special=special) for t in tokens)

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends a generation (``llama_vocab_is_eog``: EOS, EOT, ...)."""
        return bool(self.lc.llama_vocab_is_eog(self.vocab, token))

    # ------------------------------------------------------------------------------------------- evaluation

    def _decode(self, tokens: Sequence[int], pos0: int, outputs: Callable[[int], bool]) -> None:
        lc, b = self.lc, self.batch
        for k, t in enumerate(tokens):
            b.token[k] = int(t)
            b.pos[k] = pos0 + k
            b.n_seq_id[k] = 1
            b.seq_id[k][0] = 0
            b.logits[k] = outputs(pos0 + k)
        b.n_tokens = len(tokens)
        with guard(self.label, "decode"):
            rc = lc.llama_decode(self.ctx, b)
        if self._cb_error is not None:
            err, self._cb_error = self._cb_error, None
            raise err
        if rc != 0:
            raise VerifyError(f"{self.label}: llama.cpp failed to decode (llama_decode returned {rc})")

    def reset(self) -> None:
        """Empty the cache: the next call evaluates everything from position 0."""
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        self._past = []

    def logits(self, tokens: Sequence[int], first: int | None = None) -> np.ndarray:
        """Logits of ``tokens`` evaluated from an empty cache, rows ``first..len-1``: (rows, n_vocab) float32.

        ``first`` defaults to 0 with ``logits_all``, else to the last position. When the tokens fit one batch
        (``n_batch``) the result is a view of llama.cpp's buffer, valid until the next call; otherwise a copy."""
        n = len(tokens)
        if n == 0 or n > self.n_ctx:
            raise InputError(f"{self.label}: {n} tokens for a {self.n_ctx}-token context")
        if first is None:
            first = 0 if self.logits_all else n - 1
        self.reset()
        parts: list[np.ndarray] = []
        for s in range(0, n, self.n_batch):
            piece = tokens[s:s + self.n_batch]
            self._decode(piece, s, lambda p: p >= first)
            rows = sum(1 for p in range(s, s + len(piece)) if p >= first)
            if rows:
                ptr = self.lc.llama_get_logits(self.ctx)
                a = np.ctypeslib.as_array(ptr, shape=(rows * self.n_vocab,)).reshape(rows, self.n_vocab)
                parts.append(a if n <= self.n_batch else a.copy())
        self._past = list(tokens)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def decode_batch(self, tokens: Sequence[int], pos: Sequence[int], seq: Sequence[int],
                     output: Sequence[bool]) -> np.ndarray:
        """One ``llama_decode`` of a batch as llama.cpp's tools build it (``common_batch_add``): token ``k`` at
        position ``pos[k]`` of sequence ``seq[k]`` (``< n_seq_max``), its logits kept when ``output[k]``. The cache
        is not cleared (see :meth:`reset`). Returns the kept rows' logits, (rows, n_vocab) float32, a view of
        llama.cpp's buffer valid until the next call.

        Raises :class:`InputError` for more tokens than ``n_batch``, :class:`VerifyError` when llama.cpp fails."""
        n = len(tokens)
        if not 0 < n <= self.n_batch:
            raise InputError(f"{self.label}: a batch of {n} tokens (n_batch {self.n_batch})")
        lc, b = self.lc, self.batch
        for k in range(n):
            b.token[k] = int(tokens[k])
            b.pos[k] = int(pos[k])
            b.n_seq_id[k] = 1
            b.seq_id[k][0] = int(seq[k])
            b.logits[k] = bool(output[k])
        b.n_tokens = n
        with guard(self.label, "decode"):
            rc = lc.llama_decode(self.ctx, b)
        if self._cb_error is not None:
            err, self._cb_error = self._cb_error, None
            raise err
        if rc != 0:
            raise VerifyError(f"{self.label}: llama.cpp failed to decode (llama_decode returned {rc})")
        self._past = []
        rows = sum(1 for o in output if o)
        if not rows:
            return np.zeros((0, self.n_vocab), np.float32)
        ptr = lc.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(rows * self.n_vocab,)).reshape(rows, self.n_vocab)

    def _new_sampler(self, temperature: float, top_p: float, top_k: int, min_p: float) -> Any:
        # llama-cpp-python's Llama.generate chain, less its no-op stages at our settings (penalties at 1.0,
        # typical at 1.0): top-k, top-p, min-p, temperature, then a draw from the seeded distribution.
        lc = self.lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if temperature == 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(top_k))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(top_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(min_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(temperature))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(self.seed))
        return chain

    def set_seed(self, seed: int) -> None:
        """The seed of the next :meth:`generate`'s draws."""
        self.seed = int(seed) % 2**32

    def generate(self, tokens: Sequence[int], *, temperature: float, top_p: float, top_k: int,
                 min_p: float) -> Iterator[int]:
        """Sample tokens after ``tokens`` until the caller stops (the iterator never ends by itself).

        The evaluated prefix shared with the previous call is kept in the cache (what llama-cpp-python's
        ``generate`` does), so resuming after inserted tokens evaluates only the new ones."""
        seq = list(tokens)
        if not seq:
            raise InputError(f"{self.label}: generation needs at least one token")
        keep = 0
        for a, c in zip(self._past, seq):
            if a != c:
                break
            keep += 1
        keep = min(keep, len(seq) - 1)  # the last token is evaluated again: its logits are what is sampled
        mem = self.lc.llama_get_memory(self.ctx)
        if keep == 0 or not self.lc.llama_memory_seq_rm(mem, 0, keep, -1):
            self.reset()
            keep = 0
        self._past = seq[:keep]
        if self._sampler is not None:
            self.lc.llama_sampler_free(self._sampler)
        self._sampler = smpl = self._new_sampler(temperature, top_p, top_k, min_p)
        return self._sample_loop(smpl, seq[keep:])

    def _sample_loop(self, smpl: Any, todo: list[int]) -> Iterator[int]:
        while True:
            pos0 = len(self._past)
            if pos0 + len(todo) > self.n_ctx:
                raise InputError(f"{self.label}: the context of {self.n_ctx} tokens is full")
            with guard(self.label, "decode"):  # one install per token; the nested guards only relabel
                for s in range(0, len(todo), self.n_batch):
                    piece = todo[s:s + self.n_batch]
                    last = pos0 + len(todo) - 1

                    def is_last(p: int, last: int = last) -> bool:
                        return p == last

                    self._decode(piece, pos0 + s, is_last)
                self._past += todo
                with guard(self.label, "sample"):
                    tok = int(self.lc.llama_sampler_sample(smpl, self.ctx, -1))
            yield tok
            todo = [tok]

    def close(self) -> None:
        """Free the sampler, batch, context and model (idempotent)."""
        lc = self.lc
        if self._sampler is not None:
            lc.llama_sampler_free(self._sampler)
            self._sampler = None
        if self.batch is not None:
            lc.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            lc.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            lc.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
