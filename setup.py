"""Optional compiled accelerator for l1quant.kernels (everything else is configured in pyproject.toml).

The extension is ``optional=True``: if no C compiler is available the build still succeeds and the kernels use the
numpy path (byte-identical, slower). ``L1QUANT_NO_NATIVE=1`` disables the compiled path at run time.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup

# -ffp-contract=off: x * id + 0.49999997 must round twice; a fused multiply-add would change Q8_0 bytes.
# -fno-math-errno: sqrtf needs no errno path, so it compiles to the (correctly rounded, same bits) instruction and
# vectorizes: the IQ2 weights' 32 square roots per 16 values were scalar calls guarded for errno (IQ2_S +3.6%).
_UNIX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno", "-std=c99"]

setup(
    ext_modules=[
        Extension(
            "l1quant.kernels._fastq8",
            sources=["l1quant/kernels/_fastq8.c", "l1quant/kernels/_kquants.c",
                     "l1quant/kernels/_iquants2.c", "l1quant/kernels/_iquants3.c"],
            depends=["l1quant/kernels/_halfconv.h", "l1quant/kernels/_iqrun.h"],  # rebuild when the shared f16 helpers change; ships in sdists
            extra_compile_args=[] if sys.platform == "win32" else _UNIX_FLAGS,
            optional=True,
        )
    ]
)
