"""llama-quantize itself, run in-process through llama-cpp-python's ``llama_model_quantize`` (the tool's whole
pipeline: type choice, kernels, file layout), for the mix and parity tests.

Example (in a test):
    >>> q = llama_quantize(lc, Path("in-BF16.gguf"), Path("out.gguf"), "Q4_K_M")   # doctest: +SKIP
    >>> q.rc                                                                      # doctest: +SKIP
    0
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from gguf.constants import GGMLQuantizationType

from l1quant.conversion import mixes
from l1quant.conversion.mixes import QuantOptions


@contextlib.contextmanager
def captured_log(lc: ModuleType) -> Iterator[list[str]]:
    """Route llama.cpp's log into a list for the duration (then give llama-cpp-python its own logger back)."""
    lines: list[str] = []

    @lc.llama_log_callback
    def on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", "replace"))

    lc.llama_log_set(on_log, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        from llama_cpp import _logger

        lc.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


@dataclass
class Quantized:
    rc: int
    log: str
    path: Path

    @property
    def fell_back(self) -> set[str]:
        """Tensors llama.cpp warned about: "warning: <name> - ncols N not divisible by B ..."."""
        return set(re.findall(r"warning: (\S+)\s+- ncols", self.log))


def llama_quantize(lc: ModuleType, src: Path, dst: Path, mix: str, options: QuantOptions | None = None,
                   imatrix: dict[str, Any] | None = None) -> Quantized:
    """Run llama-quantize in-process with the flags ``options`` stands for; ``imatrix`` (name -> float32 array of
    per-column weights) is handed over as the tool's ``main`` hands a loaded file (no ``quantize.imatrix.*`` keys:
    the tool's ``main`` writes those)."""
    o = options or QuantOptions()
    params = lc.llama_model_quantize_default_params()
    params.ftype = getattr(lc, "LLAMA_FTYPE_ALL_F32" if mix == "F32" else f"LLAMA_FTYPE_MOSTLY_{mix}")
    params.nthread = 2
    params.pure = o.pure
    params.quantize_output_tensor = not o.leave_output_tensor
    if o.output_tensor_type is not None:
        params.output_tensor_type = int(o.output_tensor_type)  # type: ignore[arg-type]
    if o.token_embedding_type is not None:
        params.token_embedding_type = int(o.token_embedding_type)  # type: ignore[arg-type]
    keep: list[Any] = []
    if o.tensor_types:
        # the C API takes the patterns as given; QuantOptions already lower-cased them like quantize.cpp does
        arr = (lc.llama_model_tensor_override * (len(o.tensor_types) + 1))()
        for i, (pattern, typ) in enumerate(o.tensor_types):
            b = pattern.encode()
            keep.append(b)
            arr[i].pattern, arr[i].type = b, int(typ)
        arr[len(o.tensor_types)].pattern = None  # the list ends at a null pattern
        keep.append(arr)
        params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(lc.llama_model_tensor_override))
    if imatrix:
        data = (lc.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            b, v = name.encode(), (ctypes.c_float * len(values))(*[float(x) for x in values])
            keep += [b, v]
            data[i].name, data[i].data, data[i].size = b, ctypes.cast(v, ctypes.POINTER(ctypes.c_float)), len(values)
        data[len(imatrix)].name = None  # the list ends at a null name
        keep.append(data)
        params.imatrix = ctypes.cast(data, ctypes.POINTER(lc.llama_model_imatrix_data))
    with captured_log(lc) as lines:
        rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    return Quantized(int(rc), "".join(lines), dst)


def _type_name(t: GGMLQuantizationType | str | None) -> str | None:
    return None if t is None else mixes.parse_ggml_type(t).name


def _options_json(o: QuantOptions) -> str:
    return json.dumps({"pure": o.pure, "leave_output_tensor": o.leave_output_tensor,
                       "output_tensor_type": _type_name(o.output_tensor_type),
                       "token_embedding_type": _type_name(o.token_embedding_type),
                       "tensor_types": [[p, _type_name(t)] for p, t in o.tensor_types]})


def _run_isolated(src: str, dst: str, mix: str, options: str) -> int:
    """Child side of :func:`llama_quantize_isolated`: prints the log, returns llama-quantize's status."""
    import llama_cpp as lc

    q = llama_quantize(lc, Path(src), Path(dst), mix, QuantOptions(**json.loads(options)))
    print(q.log)
    return q.rc


def llama_quantize_isolated(src: Path, dst: Path, mix: str, options: QuantOptions) -> tuple[int, str]:
    """Run llama-quantize in a child process, for inputs it may fail on: a failure can be an abort (SIGABRT) that
    would take pytest down, or a write past a buffer. Returns the child's exit status (non-zero: failed) and log."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from llama_quantize import _run_isolated; "
            "sys.exit(_run_isolated(*sys.argv[2:]))")
    r = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(src), str(dst), mix,
                        _options_json(options)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "GGML_NO_BACKTRACE": "1"})
    return r.returncode, r.stdout + r.stderr
