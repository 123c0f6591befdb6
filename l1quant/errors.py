"""One exception hierarchy for everything l1quant refuses.

Every error carries a one-line message that names the file, tensor or key at fault and what was expected versus
found; the CLI prints ``str(err)`` and exits non-zero, never a traceback (``--debug`` shows one).

Example:
    >>> try:
    ...     raise ConfigError("config.json: num_attention_heads=7 does not divide hidden_size=1536")
    ... except L1QuantError as e:
    ...     print(e)
    config.json: num_attention_heads=7 does not divide hidden_size=1536
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class L1QuantError(Exception):
    """Base class: a clean, user-facing refusal. ``exit_code`` is what the CLI returns."""

    exit_code: int = 1


class InputError(L1QuantError):
    """The model folder or one of its files is missing, unreadable or malformed."""


class ConfigError(InputError):
    """config.json (or generation_config.json) lacks a key, has a wrong type, or inconsistent values."""


class SafetensorsError(InputError):
    """A safetensors file or its shard index is malformed, truncated or inconsistent."""


class TensorError(InputError):
    """A tensor is missing, unexpected, has the wrong shape/dtype, or holds NaN/Inf."""


class TokenizerError(InputError):
    """Tokenizer files don't parse, don't fit the config, or hash to an unknown pre-tokenizer."""


class NotImplementedInputError(ConfigError, NotImplementedError):
    """A valid model that uses something l1quant does not implement (yarn rope scaling in the reference forward
    pass): a one-line refusal for the CLI, and still a ``NotImplementedError`` for code that skips such a step."""


class GGUFFormatError(L1QuantError):
    """A GGUF file cannot be read: bad magic, truncated, hostile lengths or offsets."""

    exit_code = 2


class OutputError(L1QuantError):
    """The output cannot be written (unwritable folder, disk full, target is a directory...)."""


class VerifyError(L1QuantError):
    """A verification check failed (used when verify is asked to raise rather than report)."""


class SettingError(L1QuantError, ValueError):
    """An ``L1QUANT_*`` environment variable holds a value l1quant does not accept (a code path this build and CPU
    cannot run): a one-line refusal for the CLI, and still a ``ValueError`` for code that expects one."""


class RuntimeMissingError(L1QuantError):
    """An optional extra (llama-cpp-python, matplotlib, huggingface_hub) is needed but not installed."""


class ResourceError(L1QuantError):
    """The machine or a limit leaves too little of something (memory, address space) for a step that cannot fail
    cleanly once started: refused before it starts."""


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives during output, so cleanup runs exactly as for Ctrl-C.

    A KeyboardInterrupt subclass on purpose: ``except Exception`` must not swallow it. The CLI exits 128 + the
    signal number (143 for SIGTERM, 129 for SIGHUP, 131 for SIGQUIT).
    """

    def __init__(self, signum: int = 15) -> None:
        super().__init__(signum)
        self.signum = signum


def quote(name: str) -> str:
    """Quote a key or tensor name for a one-line message: non-printable characters (newlines...) escaped.

    Example:
        >>> quote("blk.0.attn_q.weight"), quote("a\\nb")
        ("'blk.0.attn_q.weight'", "'a\\\\nb'")
    """
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in name) + "'"


def clip(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a hostile value cannot flood a one-line message.

    ``repr`` also escapes newlines and control characters, which keeps messages on one line.

    Example:
        >>> clip("x" * 100, 12)
        "'xxxxxxx...'"
        >>> clip([1, 2])
        '[1, 2]'
    """
    if isinstance(value, (list, dict, tuple)) and len(value) > 1000:
        return f"<{type(value).__name__} of {len(value)} items>"  # repr of a huge container would be slow
    try:
        r = repr(value)
    except RecursionError:  # a deeply nested JSON value
        return f"<deeply nested {type(value).__name__}>"
    if len(r) > limit:
        q = r[0] if r[:1] in ("'", '"') else ""
        r = r[: limit - 3 - len(q)] + "..." + q
    return r


#: Largest text/JSON input file read whole: tokenizer.json of the biggest vocabularies is ~35 MB (Gemma-3:
#: 33 MB, Qwen2: 7 MB); 128 MiB leaves room for any real one while bounding the JSON parse (roughly 10-20x the
#: file in Python objects, i.e. at most ~2.5 GB) instead of letting ``/dev/zero`` run memory out.
MAX_TEXT_FILE_BYTES = 128 << 20


def open_regular(path: Path, error: type[L1QuantError], *, max_bytes: int | None = None) -> int:
    """A read-only descriptor of ``path``, or ``error`` naming the file, when it is not a regular file of at most
    ``max_bytes`` bytes.

    Opened with ``O_NONBLOCK`` so that a FIFO in place of a file cannot block ``open()`` (the type is checked on
    the open descriptor, so a swap between check and open is caught too); character devices (``/dev/zero``),
    sockets and folders are refused before a byte is read. The caller closes the descriptor.

    Example:
        >>> open_regular(Path("/dev/zero"), InputError)
        Traceback (most recent call last):
        ...
        l1quant.errors.InputError: /dev/zero: not a regular file (a character device)
    """
    import stat as _stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        import errno

        hint = "; raise the limit (ulimit -n)" if e.errno in (errno.EMFILE, errno.ENFILE) else ""
        raise error(f"{path}: cannot read: {e.strerror or e}{hint}") from e
    try:
        st = os.fstat(fd)
        if not _stat.S_ISREG(st.st_mode):
            raise error(f"{path}: not a regular file ({file_kind(st.st_mode)})")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{path}: {st.st_size} bytes is too large (at most {max_bytes} bytes are read)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages ("a FIFO", "a character device", ...), from its ``st_mode``.

    Example:
        >>> import stat
        >>> file_kind(stat.S_IFIFO)
        'a FIFO'
    """
    import stat as _stat

    for test, name in ((_stat.S_ISDIR, "a folder"), (_stat.S_ISFIFO, "a FIFO"), (_stat.S_ISCHR, "a character device"),
                       (_stat.S_ISBLK, "a block device"), (_stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def read_bytes(path: Path, error: type[L1QuantError], max_bytes: int = MAX_TEXT_FILE_BYTES) -> bytes:
    """All bytes of regular file ``path`` (at most ``max_bytes``; see :func:`open_regular`), or ``error``.

    Reads at most ``max_bytes + 1`` bytes even if the file grows while being read.
    """
    fd = open_regular(path, error, max_bytes=max_bytes)
    try:
        chunks: list[bytes] = []
        total = 0
        while True:
            b = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not b:
                break
            chunks.append(b)
            total += len(b)
            if total > max_bytes:
                raise error(f"{path}: more than {max_bytes} bytes (grew while being read?)")
        return b"".join(chunks)
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror or e}") from e
    finally:
        os.close(fd)


def read_text(path: Path, error: type[L1QuantError], max_bytes: int = MAX_TEXT_FILE_BYTES) -> str:
    """The UTF-8 text of ``path``, or ``error`` with one line naming the file (not a regular file, larger than
    ``max_bytes``, unreadable, or not UTF-8).

    Example:
        >>> read_text(Path("chat_template.jinja"), TokenizerError)  # doctest: +SKIP
        '{% for message in messages %}...'
    """
    try:
        return read_bytes(path, error, max_bytes).decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text: {str(e)[:200]}") from None


def read_json(path: Path, error: type[L1QuantError], max_bytes: int = MAX_TEXT_FILE_BYTES) -> Any:
    """The parsed JSON of ``path``, or ``error`` with one line naming the file. Hostile JSON (5000-digit numbers,
    deep nesting, bad UTF-8, a FIFO or ``/dev/zero`` in its place, more than ``max_bytes``) is a clean refusal
    too, never a traceback or a hang.

    Example:
        >>> read_json(Path("tokenizer_config.json"), TokenizerError)["add_bos_token"]  # doctest: +SKIP
        False
    """
    data = read_bytes(path, error, max_bytes)
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError: bad UTF-8 is invalid JSON
        raise error(f"{path}: invalid JSON: {str(e)[:200]}") from None


def address_space_left() -> tuple[int, str] | None:
    """``(bytes, limit)``: how much more the process may map under the tightest of ``RLIMIT_AS`` (``ulimit -v``,
    against VmSize) and ``RLIMIT_DATA`` (``ulimit -d``, against VmData); None when neither is set or Linux's
    ``/proc/self/status`` is not there. A cgroup limit is not counted: the kernel ends the process there (SIGKILL),
    no allocation fails.

    Example:
        >>> address_space_left() is None or address_space_left()[0] >= 0
        True
    """
    import resource

    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    used = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmSize", "VmData"):
            used[key] = int(rest.split()[0]) * 1024  # kB
    best: tuple[int, str] | None = None
    for res, key, name in ((resource.RLIMIT_AS, "VmSize", "ulimit -v"), (resource.RLIMIT_DATA, "VmData", "ulimit -d")):
        soft = resource.getrlimit(res)[0]
        if soft == resource.RLIM_INFINITY or key not in used:
            continue
        left = max(0, soft - used[key])
        if best is None or left < best[0]:
            best = (left, name)
    return best


def require_address_space(need: int, what: str) -> None:
    """Raise :class:`ResourceError` (one line naming ``what``) when a memory limit leaves less than ``need`` bytes.

    For native code that aborts the process when an allocation fails (the Rust ``tokenizers`` library prints
    "memory allocation of N bytes failed" and raises SIGABRT): Python's MemoryError never gets a chance there.
    """
    left = address_space_left()
    if left is not None and left[0] < need:
        raise ResourceError(f"{what}: out of memory: needs about {need >> 20} MiB, and the memory limit "
                            f"({left[1]}) leaves {left[0] >> 20} MiB; raise the limit")
