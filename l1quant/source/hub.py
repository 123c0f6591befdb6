"""Hugging Face repo ids to local model folders, for ``l1quant convert l3lab/L1-Qwen-1.5B-Max``.

A local folder always wins over a repo id of the same spelling. Otherwise the id is resolved with
``huggingface_hub.snapshot_download``, fetching only the files conversion reads (:data:`CONVERT_FILES`), through the
normal Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``). With ``HF_HUB_OFFLINE=1`` nothing is fetched: the id must
already be in the cache.

Example:
    >>> resolve_model("l3lab/L1-Qwen-1.5B-Max")  # doctest: +SKIP
    PosixPath('/home/me/.cache/huggingface/hub/models--l3lab--L1-Qwen-1.5B-Max/snapshots/5f6e.../')
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from l1quant.errors import InputError, RuntimeMissingError

__all__ = ["CONVERT_FILES", "is_repo_id", "resolve_model"]

#: The files ``l1quant convert`` reads (allow_patterns for snapshot_download); weights are only safetensors.
CONVERT_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "additional_chat_templates/*.jinja",
    "merges.txt",
    "special_tokens_map.json",
    "README.md",
)

# Hub ids: "name" or "org/name"; letters, digits, '-', '_', '.'; no "--" or ".." (the Hub's own rules).
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")

_TRUE = {"1", "on", "yes", "true"}


def is_repo_id(text: str) -> bool:
    """Whether ``text`` is spelt like a Hugging Face model id (``org/name``).

    Only ids with an owner are accepted: a bare ``name`` is far more likely a mistyped local folder.

    Example:
        >>> is_repo_id("l3lab/L1-Qwen-1.5B-Max"), is_repo_id("./models/L1"), is_repo_id("L1")
        (True, False, False)
    """
    return ("/" in text and bool(_REPO_ID.match(text)) and "--" not in text and ".." not in text
            and not text.endswith((".", "-")))


def _offline() -> bool:
    # Read the variable now, not huggingface_hub.constants (frozen when the library was first imported).
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _cache_dir() -> str | None:
    # Same precedence as huggingface_hub, evaluated now for the same reason as _offline().
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _hub_errors() -> dict[str, tuple[type[BaseException], ...]]:
    import huggingface_hub

    modules: list[Any] = [huggingface_hub]
    for name in ("huggingface_hub.errors", "huggingface_hub.utils"):
        try:
            modules.append(__import__(name, fromlist=["_"]))
        except ImportError:
            pass

    def find(*names: str) -> tuple[type[BaseException], ...]:
        found: list[type[BaseException]] = []
        for n in names:
            for m in modules:
                cls = getattr(m, n, None)
                if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
                    found.append(cls)
        return tuple(found)

    return {
        "missing": find("RepositoryNotFoundError"),
        "revision": find("RevisionNotFoundError"),
        "gated": find("GatedRepoError"),
        "offline": find("LocalEntryNotFoundError", "IncompleteSnapshotError", "OfflineModeIsEnabled"),
        "invalid": find("HFValidationError"),
        "http": find("HfHubHTTPError"),
    }


def resolve_model(model: str | os.PathLike[str], *, revision: str | None = None) -> Path:
    """Local folder for ``model``: the folder itself, or the cached snapshot of a Hugging Face repo id.

    A path that exists as a folder is returned as is (``revision`` is then ignored). A string spelt like
    ``org/name`` that is not a local folder is downloaded (only :data:`CONVERT_FILES`) or, with
    ``HF_HUB_OFFLINE=1``, looked up in the local cache only.

    Raises:
        InputError: no such folder, unknown/gated repo or revision, cache miss while offline, or a snapshot
            without config.json.
        RuntimeMissingError: a repo id was given and huggingface_hub is not installed.

    Example:
        >>> resolve_model("tests/data/qwen2.5-tokenizer")  # doctest: +SKIP
        PosixPath('tests/data/qwen2.5-tokenizer')
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    text = str(model)
    if path.exists():
        raise InputError(f"{text}: expected a model folder (with config.json and *.safetensors), found a file")
    if isinstance(model, Path) or not is_repo_id(text):
        raise InputError(f"{text}: no such model folder, and not a Hugging Face repo id (expected org/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise RuntimeMissingError(f"{text}: downloading a Hugging Face repo id needs huggingface_hub: "
                                  "pip install huggingface_hub (l1quant's hub extra; in a checkout: pip install '.[hub]')") from None

    offline = _offline()
    errs = _hub_errors()
    at = f"@{revision}" if revision else ""
    try:
        folder = snapshot_download(text, revision=revision, allow_patterns=list(CONVERT_FILES),
                                   cache_dir=_cache_dir(), local_files_only=offline)
    except errs["gated"]:
        raise InputError(f"{text}: the repo is gated; accept its terms on huggingface.co and log in "
                         "(hf auth login), or download it and pass the folder") from None
    except errs["revision"]:
        raise InputError(f"{text}: revision {revision!r} not found on the Hugging Face Hub") from None
    except errs["missing"]:
        raise InputError(f"{text}: no such model repo on the Hugging Face Hub (or it is private: log in with "
                         "hf auth login)") from None
    except errs["offline"]:
        if offline:
            raise InputError(f"{text}{at}: not in the local Hugging Face cache ({_cache_dir() or 'default cache'}) "
                             "and HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE to download it, or pass a local "
                             "folder") from None
        raise InputError(f"{text}{at}: could not reach the Hugging Face Hub and it is not in the local cache; "
                         "check the connection, or pass a local folder") from None
    except errs["invalid"] as e:
        raise InputError(f"{text}: not a valid Hugging Face repo id: {e}") from None
    except errs["http"] as e:
        raise InputError(f"{text}{at}: Hugging Face Hub request failed: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise InputError(f"{text}{at}: could not download into the Hugging Face cache: {e}") from None
    out = Path(folder)
    if not (out / "config.json").is_file():
        raise InputError(f"{text}{at}: snapshot {out} has no config.json; is this a transformers model repo?")
    return out
