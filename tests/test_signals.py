"""Nothing is lost: Ctrl-C, SIGTERM, a full disk, a file-size limit and unwritable targets.

Every test checks the same three promises: the output folder ends up holding only what was there before (a
pre-existing target stays byte-identical, no ``.part`` file survives), the error is one clean line, and the input
folder is never written to.

The disk-full and read-only cases use the real kernel behaviour where the machine allows it: a private mount
namespace (``unshare``) with a 1-8 MiB tmpfs, or a read-only bind mount. Where namespaces are not allowed they
skip, and the in-process tests below still cover ENOSPC by making ``posix_fallocate``/``pwrite`` fail (patching
the operating system, not the code under test).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from cliutil import PRECIOUS, TARGET, clean_env, cli, tree_hash  # tests/ is on sys.path (pytest rootdir import)

import l1quant
from l1quant.errors import OutputError
from l1quant.output import AtomicOutput


def out_dir_with_target(root: Path) -> Path:
    out = root / "out"
    out.mkdir()
    (out / TARGET).write_bytes(PRECIOUS)
    return out


def assert_untouched(out: Path) -> None:
    assert sorted(os.listdir(out)) == [TARGET], f"left behind: {sorted(os.listdir(out))}"
    assert (out / TARGET).read_bytes() == PRECIOUS


def one_line(stderr: str, prefix: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), stderr
    return lines[0]


def default_signals() -> None:
    # A shell's background jobs start with SIGINT ignored, and Python keeps an inherited SIG_IGN: restore the
    # defaults so the child gets KeyboardInterrupt as under a terminal.
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, signal.SIG_DFL)


# ------------------------------------------------------------------------------------------ signals


#: The header of the tiny checkpoint's GGUF is ~6 MiB (151936 tokens); its full Q8_0 size is ~25 MiB. A
#: temporary file larger than this has had its space reserved, which happens right before streaming starts.
RESERVED = 10 << 20


def temp_size(pid: int, out: Path) -> int:
    """Size of the output's temporary file held open by process ``pid`` (0 if none yet).

    The temporary file is unnamed (O_TMPFILE: ``/proc/PID/fd/N`` reads ``OUT/#12345 (deleted)``) or, on filesystems
    without O_TMPFILE, a named ``.l1q-*.part`` file: either way it is one of the process's descriptors in ``out``.
    """
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith(str(out) + "/") and (link.endswith("(deleted)") or link.endswith(".part")):
                return os.stat(f"/proc/{pid}/fd/{fd}").st_size
        except OSError:
            continue
    return 0


def interrupt_mid_conversion(model: Path, out: Path, sig: int, threads: int) -> tuple[subprocess.Popen[str], int]:
    """Start a slow conversion (tiny chunks: ~40k jobs), wait until it streams tensor data, then send ``sig``."""
    p = subprocess.Popen(
        [*cli(), "convert", str(model), "--type", "q8_0", "-o", str(out / TARGET), "-q", "--threads", str(threads),
         "--chunk-mb", "0.001"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
        preexec_fn=default_signals)  # noqa: PLW1509 - only resets signal dispositions; no locks involved
    deadline = time.monotonic() + 120
    part_size = 0
    try:
        while time.monotonic() < deadline and p.poll() is None:
            part_size = temp_size(p.pid, out)
            if part_size > RESERVED:
                break  # the header is written and the full size reserved: the data section is streaming
            time.sleep(0.005)
        assert p.poll() is None, f"conversion ended (rc={p.returncode}) before it could be interrupted"
        p.send_signal(sig)
    except BaseException:
        p.kill()
        p.communicate()
        raise
    return p, part_size


@pytest.mark.parametrize(("sig", "rc", "word", "threads"), [
    pytest.param(signal.SIGINT, 130, "interrupted", 1, id="SIGINT-1thread"),
    pytest.param(signal.SIGTERM, 143, "terminated", 2, id="SIGTERM-2threads"),
    pytest.param(signal.SIGINT, 130, "interrupted", 2, id="SIGINT-2threads", marks=pytest.mark.slow),
    pytest.param(signal.SIGTERM, 143, "terminated", 1, id="SIGTERM-1thread", marks=pytest.mark.slow),
])
def test_signal_mid_conversion_leaves_nothing(tiny_r1: Path, tmp_path: Path, sig: int, rc: int, word: str,
                                              threads: int) -> None:
    out = out_dir_with_target(tmp_path)
    before = tree_hash(tiny_r1)
    p, part_size = interrupt_mid_conversion(tiny_r1, out, sig, threads)
    _, stderr = p.communicate(timeout=60)
    assert part_size > RESERVED, "the temporary file never reached its reserved size"
    assert p.returncode == rc, stderr
    one_line(stderr, f"l1quant: {word}")
    assert_untouched(out)
    assert tree_hash(tiny_r1) == before


# ------------------------------------------------------------------------------------------ disk full / file size


def _limit_file_size(limit: int) -> Any:
    def pre() -> None:
        default_signals()
        # Ignore SIGXFSZ so a write past the limit fails with EFBIG instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


@pytest.mark.parametrize("limit", [pytest.param(1 << 20, id="header-too-big"),
                                   pytest.param(12 << 20, id="data-too-big")])
def test_file_size_limit_is_a_clean_error(tiny_r1: Path, tmp_path: Path, limit: int) -> None:
    """RLIMIT_FSIZE makes the kernel refuse writes past ``limit`` (EFBIG), like a filesystem's size cap."""
    out = out_dir_with_target(tmp_path)
    before = tree_hash(tiny_r1)
    r = subprocess.run([*cli(), "convert", str(tiny_r1), "--type", "q8_0", "-o", str(out / TARGET), "-q"],
                       check=False, capture_output=True, text=True, timeout=120, env=clean_env(),
                       preexec_fn=_limit_file_size(limit))
    assert r.returncode == 1, r.stderr
    line = one_line(r.stderr, "l1quant: error: ")
    assert str(out / TARGET) in line and "file too large" in line
    assert_untouched(out)
    assert tree_hash(tiny_r1) == before


def _namespace_prefix() -> list[str] | None:
    """``unshare`` arguments for a private mount namespace where we may mount, or None if not allowed here."""
    exe = shutil.which("unshare")
    if exe is None:
        return None
    prefix = [exe, "-m"] if os.geteuid() == 0 else [exe, "-Urm"]
    script = "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"
    probe = subprocess.run([*prefix, "sh", "-c", script], check=False, capture_output=True, timeout=30)
    return prefix if probe.returncode == 0 else None


_NS_DRIVER = r"""
import hashlib, json, os, subprocess, sys
spec = json.loads(sys.argv[1])
out = spec["out"]
subprocess.run(spec["mount"], check=True)
with open(os.path.join(out, spec["target"]), "wb") as f:
    f.write(spec["precious"].encode())
if spec.get("remount"):
    subprocess.run(spec["remount"], check=True)
r = subprocess.run(spec["cmd"], capture_output=True, text=True, env=spec["env"])
files = sorted(os.listdir(out))
blob = open(os.path.join(out, spec["target"]), "rb").read()
print(json.dumps({"rc": r.returncode, "stderr": r.stderr, "files": files, "target": blob.decode()}))
"""


def run_in_namespace(prefix: list[str], model: Path, out: Path, mount: list[str],
                     remount: list[str] | None = None) -> dict[str, Any]:
    spec = {"out": str(out), "target": TARGET, "precious": PRECIOUS.decode(), "mount": mount, "remount": remount,
            "cmd": [*cli(), "convert", str(model), "--type", "q8_0", "-o", str(out / TARGET), "-q"],
            "env": clean_env()}
    r = subprocess.run([*prefix, sys.executable, "-c", _NS_DRIVER, json.dumps(spec)], check=False,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


@pytest.mark.parametrize("size", [pytest.param("1m", id="header-does-not-fit"),
                                  pytest.param("8m", id="data-does-not-fit")])
def test_full_disk_is_a_clean_error(tiny_r1: Path, tmp_path: Path, size: str) -> None:
    """A real full filesystem: a tiny tmpfs in a private mount namespace (vanishes with the namespace)."""
    prefix = _namespace_prefix()
    if prefix is None:
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (unshare not permitted)")
    out = tmp_path / "out"
    out.mkdir()
    before = tree_hash(tiny_r1)
    res = run_in_namespace(prefix, tiny_r1, out, ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(out)])
    assert res["rc"] == 1, res["stderr"]
    line = one_line(res["stderr"], "l1quant: error: ")
    assert str(out / TARGET) in line and "no space left on device" in line
    assert res["files"] == [TARGET] and res["target"] == PRECIOUS.decode()
    assert tree_hash(tiny_r1) == before


def test_read_only_target_folder_is_a_clean_error(tiny_r1: Path, tmp_path: Path) -> None:
    """A read-only bind mount refuses writes even to root (chmod would not): EROFS, one line."""
    prefix = _namespace_prefix()
    if prefix is None:
        pytest.skip("cannot bind-mount in a private mount namespace here (unshare not permitted)")
    out = tmp_path / "out"
    out.mkdir()
    res = run_in_namespace(prefix, tiny_r1, out, ["mount", "--bind", str(out), str(out)],
                           remount=["mount", "-o", "remount,ro,bind", str(out)])
    assert res["rc"] == 1, res["stderr"]
    line = one_line(res["stderr"], "l1quant: error: ")
    assert str(out / TARGET) in line and "not writable" in line
    assert res["files"] == [TARGET] and res["target"] == PRECIOUS.decode()


def test_unwritable_target_folder_chmod(tiny_r1: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions (the read-only mount test covers this case)")
    out = out_dir_with_target(tmp_path)
    out.chmod(0o500)
    try:
        r = subprocess.run([*cli(), "convert", str(tiny_r1), "-o", str(out / TARGET), "-q"], check=False,
                           capture_output=True, text=True, timeout=120, env=clean_env())
    finally:
        out.chmod(0o700)
    assert r.returncode == 1
    line = one_line(r.stderr, "l1quant: error: ")
    assert "not writable" in line
    assert_untouched(out)


# ------------------------------------------------------------------------------------------ bad targets (CLI)


@pytest.mark.parametrize("kind", ["parent-missing", "parent-is-a-file"])
def test_bad_output_parent(tiny_r1: Path, tmp_path: Path, kind: str) -> None:
    if kind == "parent-missing":
        target = tmp_path / "no" / "such" / TARGET
        expect = "does not exist"
    else:
        (tmp_path / "afile").write_bytes(b"x")
        target = tmp_path / "afile" / TARGET
        expect = "is not a folder"
    before = sorted(os.listdir(tmp_path))
    r = subprocess.run([*cli(), "convert", str(tiny_r1), "-o", str(target), "-q"], check=False,
                       capture_output=True, text=True, timeout=120, env=clean_env())
    assert r.returncode == 1
    line = one_line(r.stderr, "l1quant: error: ")
    assert str(target) in line and expect in line
    assert sorted(os.listdir(tmp_path)) == before
    assert (kind == "parent-missing") or (tmp_path / "afile").read_bytes() == b"x"


# ------------------------------------------------------------------------------------------ in-process (patched OS)


def test_enospc_at_reservation(tiny_r1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk is full when space is reserved: OutputError before any tensor is converted."""
    out = out_dir_with_target(tmp_path)

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OutputError, match="no space left on device") as ei:
        l1quant.convert(tiny_r1, "q8_0", out / TARGET, threads=1)
    assert "\n" not in str(ei.value) and str(out / TARGET) in str(ei.value)
    assert_untouched(out)


@pytest.mark.parametrize("threads", [1, 2])
def test_enospc_mid_stream(tiny_r1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """A filesystem without fallocate fills up halfway through the data: the partial file is removed."""
    out = out_dir_with_target(tmp_path)
    before = tree_hash(tiny_r1)
    real_pwrite = os.pwrite
    calls = {"n": 0}

    def no_fallocate(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    def filling_pwrite(fd: int, data: Any, offset: int) -> int:
        calls["n"] += 1
        if calls["n"] > 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "posix_fallocate", no_fallocate)
    monkeypatch.setattr(os, "pwrite", filling_pwrite)
    with pytest.raises(OutputError, match="no space left on device"):
        l1quant.convert(tiny_r1, "q8_0", out / TARGET, threads=threads, chunk_bytes=1 << 14)
    assert calls["n"] > 20, "the data section was never written"
    assert_untouched(out)
    assert tree_hash(tiny_r1) == before


def test_keyboard_interrupt_in_process(tiny_r1: Path, tmp_path: Path) -> None:
    """Ctrl-C raised from inside the streaming (progress callback) propagates; the temporary file is gone."""
    out = out_dir_with_target(tmp_path)
    seen = {"bytes": 0}

    def progress(n: int) -> None:
        seen["bytes"] += n
        if seen["bytes"] > 1 << 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        l1quant.convert(tiny_r1, "q8_0", out / TARGET, threads=1, chunk_bytes=1 << 16, progress=progress)
    assert_untouched(out)


def test_atomic_output_refuses_directory_target(tmp_path: Path) -> None:
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(OutputError, match="is a directory"), AtomicOutput(tmp_path / "dir.gguf", 16):
        pass
    assert sorted(os.listdir(tmp_path)) == ["dir.gguf"]


def test_atomic_output_never_unlinks_target_on_early_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the temporary file cannot even be created, the existing target is not the thing cleaned up."""
    out = out_dir_with_target(tmp_path)

    def no_mkstemp(*a: Any, **k: Any) -> Any:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", no_mkstemp)
    monkeypatch.setattr("l1quant.output._probe_link_mode", lambda folder: "none")  # the named fallback
    with pytest.raises(OutputError, match="not writable"), AtomicOutput(out / TARGET, 16):
        pass
    assert_untouched(out)


def test_atomic_output_success_replaces_target(tmp_path: Path) -> None:
    out = out_dir_with_target(tmp_path)
    old = signal.getsignal(signal.SIGTERM)
    with AtomicOutput(out / TARGET, 4) as o:
        assert signal.getsignal(signal.SIGTERM) != old  # SIGTERM now cleans up
        assert o.path != out / TARGET and (o.unnamed or o.path.parent == out)
        assert sorted(os.listdir(out)) == [TARGET]  # the temporary file has no name (O_TMPFILE) ...
        os.pwrite(o.fd, b"GGUF", 0)
    assert (out / TARGET).read_bytes() == b"GGUF"
    assert sorted(os.listdir(out)) == [TARGET]
    assert signal.getsignal(signal.SIGTERM) == old  # and the previous handler is back
