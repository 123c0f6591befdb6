"""Convert the bundled tiny checkpoint, verify it against its source (with logits), and read the report.

Run: python examples/verify_report.py
"""

import json
import tempfile
from pathlib import Path

import l1quant

HERE = Path(__file__).parent
src = HERE / "tiny-qwen2"
out = l1quant.convert(src, "q8_0", Path(tempfile.mkdtemp()) / "tiny-q8_0.gguf")

report = l1quant.verify(out, source=src, logits=True, tokens=64)
print(report.verdict)
for t in report.tensors[:3]:  # worst first
    print(f"  {t.name:28s} {t.type:5s} rel RMSE {t.rel_rmse:.2e}  SNR {t.snr_db:.1f} dB  bytes identical: "
          f"{t.bytes_identical}")
if report.logits:
    print("  logits: mean KLD {mean_kld:.2e}, top-1 agreement {top1_agreement:.3f}".format(**report.logits))
print(json.dumps({"passed": report.passed, "checks": len(report.checks)}))
raise SystemExit(0 if report.passed else 1)
