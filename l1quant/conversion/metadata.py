"""The authorship and sampling metadata (``general.*``), bounded and type-checked before it reaches the writer.

gguf-py's :class:`gguf.Metadata` gathers these values from three places -- the YAML front matter of
``README.md``, ``generation_config.json`` and a ``--metadata`` override file -- and passes them to the writer
unchecked: ``license: 5`` or ``temperature: "hot"`` crash the writer (llama.cpp's converter crashes the same way),
``tags: [[a, b]]`` writes an array of arrays that llama.cpp cannot load, and a YAML alias bomb of a few hundred
bytes expands to tens of millions of items. Here:

* :func:`check_model_card` bounds ``README.md`` before gguf-py parses it: a regular file of at most
  MAX_MODEL_CARD_BYTES, a front matter of at most MAX_FRONT_MATTER_BYTES whose YAML, with every alias expanded,
  has at most MAX_FRONT_MATTER_ITEMS nodes (counted on the composed node graph, where an alias is a reference,
  so counting costs what the text costs).
* :func:`validate_metadata` checks every field against the GGUF type its key must have as llama.cpp reads it
  (string, string array, float32, int32), coerces where llama.cpp's converter would (an integer temperature is
  a float; a single tag string is a one-element array; a license list is joined with commas), and refuses the
  rest in one line naming the file and the key.

Example:
    >>> md = gguf.Metadata(); md.sampling_top_k = 1.5
    >>> validate_metadata(md, Path("M"), None)
    Traceback (most recent call last):
    ...
    l1quant.errors.ConfigError: M/generation_config.json: 'top_k' (general.sampling.top_k) must be an integer (int32), found 1.5
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gguf

from l1quant.errors import ConfigError, InputError, clip, read_json, read_text
from l1quant.source.config import MAX_F32, MAX_INT
from l1quant.source.inputs import MAX_MODEL_CARD_BYTES  # the folder's README.md, read by arch checks too

#: The YAML front matter of real cards is a few KB (tags, license, base_model, datasets, a model-index of
#: evaluation results up to ~100 KB). 512 KiB is generous and bounds the YAML parse (pure Python, ~1 s/MB).
MAX_FRONT_MATTER_BYTES = 512 << 10
#: Nodes of the front matter with every alias expanded. A real card has a few hundred (model-index: a few
#: thousand); a "billion laughs" of nested aliases has tens of millions from a few hundred bytes.
MAX_FRONT_MATTER_ITEMS = 100_000
#: Elements of one string array (tags, languages) or entries of base_models/datasets: real cards list tens.
MAX_ARRAY_ITEMS = 10_000

#: field -> (GGUF key, generation_config.json key or None, kind)
FIELDS: dict[str, tuple[str, str | None, str]] = {
    "sampling_sequence": (gguf.Keys.General.SAMPLING_SEQUENCE, "sequence", "str"),
    "sampling_top_k": (gguf.Keys.General.SAMPLING_TOP_K, "top_k", "i32"),
    "sampling_top_p": (gguf.Keys.General.SAMPLING_TOP_P, "top_p", "f32"),
    "sampling_min_p": (gguf.Keys.General.SAMPLING_MIN_P, "min_p", "f32"),
    "sampling_xtc_probability": (gguf.Keys.General.SAMPLING_XTC_PROBABILITY, "xtc_probability", "f32"),
    "sampling_xtc_threshold": (gguf.Keys.General.SAMPLING_XTC_THRESHOLD, "xtc_threshold", "f32"),
    "sampling_temp": (gguf.Keys.General.SAMPLING_TEMP, "temperature", "f32"),
    "sampling_penalty_last_n": (gguf.Keys.General.SAMPLING_PENALTY_LAST_N, "penalty_last_n", "i32"),
    "sampling_penalty_repeat": (gguf.Keys.General.SAMPLING_PENALTY_REPEAT, "repetition_penalty", "f32"),
    "sampling_mirostat": (gguf.Keys.General.SAMPLING_MIROSTAT, "mirostat", "i32"),
    "sampling_mirostat_tau": (gguf.Keys.General.SAMPLING_MIROSTAT_TAU, "mirostat_tau", "f32"),
    "sampling_mirostat_eta": (gguf.Keys.General.SAMPLING_MIROSTAT_ETA, "mirostat_eta", "f32"),
    **{f: (getattr(gguf.Keys.General, f.upper()), None, "str") for f in (
        "name", "author", "version", "organization", "finetune", "basename", "description", "quantized_by",
        "size_label", "url", "doi", "uuid", "repo_url", "source_url", "source_doi", "source_uuid",
        "source_repo_url", "license_name", "license_link")},
    "license": (gguf.Keys.General.LICENSE, None, "license"),
    "tags": (gguf.Keys.General.TAGS, None, "strs"),
    "languages": (gguf.Keys.General.LANGUAGES, None, "strs"),
    "base_models": ("general.base_model", None, "entries"),  # written as general.base_model.{i}.name, ...
    "datasets": ("general.dataset", None, "entries"),
}
#: The --metadata file's key for a field, where it is not the GGUF key (gguf-py's ``apply_metadata_override``
#: reads the lists of entries as ``general.base_models`` / ``general.datasets``).
_OVERRIDE_KEYS = {"base_models": "general.base_models", "datasets": "general.datasets"}
#: The string fields of one base_models / datasets entry that gguf-py writes (other keys are ignored, as there).
_ENTRY_KEYS = ("name", "author", "version", "organization", "description", "url", "doi", "uuid", "repo_url")


def check_model_card(model_dir: Path) -> None:
    """Refuse a ``README.md`` whose front matter gguf-py could not parse in bounded time and memory.

    Reads the front matter exactly as gguf-py does (the lines between a first line ``---`` and the next ``---``).
    """
    path = model_dir / "README.md"
    if not path.exists():
        return
    text = read_text(path, ConfigError, MAX_MODEL_CARD_BYTES)
    lines = text.splitlines()
    if not lines or lines[0] != "---":
        return
    body: list[str] = []
    for line in lines[1:]:
        if line == "---":
            break
        body.append(line)
    yaml_text = "\n".join(body) + "\n"
    if len(yaml_text.encode("utf-8", "surrogatepass")) > MAX_FRONT_MATTER_BYTES:
        raise ConfigError(f"{path}: YAML front matter is {len(yaml_text)} characters, more than "
                          f"{MAX_FRONT_MATTER_BYTES} bytes")
    import yaml

    yaml_text = yaml_text.replace("- no\n", '- "no"\n').replace("\t", "  ")  # gguf-py's own two fixes
    try:
        node = yaml.compose(yaml_text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML front matter does not parse: {str(e).splitlines()[0][:200]}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML front matter is nested too deeply") from None
    if node is not None:
        n = _expanded_size(node, {})
        if n > MAX_FRONT_MATTER_ITEMS:
            raise ConfigError(f"{path}: YAML front matter expands to {n} items (aliases), more than "
                              f"{MAX_FRONT_MATTER_ITEMS}")


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Nodes of ``node`` with every alias expanded, memoized on node identity (an alias is the same node object,
    so the graph is walked once). Saturates just above the limit; a recursive alias counts as over the limit."""
    import yaml

    key = id(node)
    if key in memo:
        if memo[key] < 0:  # a node that contains itself
            return MAX_FRONT_MATTER_ITEMS + 1
        return memo[key]
    memo[key] = -1
    total = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            total += _expanded_size(child, memo)
            if total > MAX_FRONT_MATTER_ITEMS:
                break
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _expanded_size(k, memo) + _expanded_size(v, memo)
            if total > MAX_FRONT_MATTER_ITEMS:
                break
    memo[key] = min(total, MAX_FRONT_MATTER_ITEMS + 1)
    return memo[key]


def validate_metadata(md: gguf.Metadata, model_dir: Path, override: Path | None) -> None:
    """Check (and coerce in place) every field of ``md`` against its GGUF type; one line naming file and key."""
    over: dict[str, Any] = {}
    if override is not None:
        obj = read_json(override, InputError)
        over = obj if isinstance(obj, dict) else {}
        if not isinstance(obj, dict):
            raise InputError(f"{override}: expected a JSON object of GGUF keys, found {type(obj).__name__}")

    card = model_dir / "README.md"
    for field, (key, gen_key, kind) in FIELDS.items():
        value = getattr(md, field, None)
        if value is None:
            continue
        if _OVERRIDE_KEYS.get(field, key) in over:
            where = f"{override}: {_OVERRIDE_KEYS.get(field, key)!r}"
        elif gen_key is not None:
            where = f"{model_dir / 'generation_config.json'}: {gen_key!r} ({key})"
        elif card.exists():
            where = f"{card} (front matter, or derived from it): {key}"
        else:  # no card: gguf-py derived it from the folder's name or config.json
            where = f"{model_dir} (derived from the folder name and config.json): {key}"
        setattr(md, field, _check(value, kind, where))


def _check(value: Any, kind: str, where: str) -> Any:
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, found {clip(value)}")
        return value
    if kind == "f32":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number (float32), found {clip(value)}")
        v = float(value) if not isinstance(value, int) or abs(value) < 1 << 1000 else math.inf
        if not math.isfinite(v) or abs(v) > MAX_F32:  # llama.cpp reads general.sampling.* floats as f32
            raise ConfigError(f"{where} must be a finite float32, found {clip(value)}")
        return value  # as written: an int stays an int, exactly as llama.cpp's converter passes it to add_float32
    if kind == "i32":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer (int32), found {clip(value)}")
        if not -MAX_INT - 1 <= value <= MAX_INT:
            raise ConfigError(f"{where} must fit int32, found {clip(value)}")
        return value
    if kind == "license":  # gguf-py joins a list of licenses with commas
        if isinstance(value, list):
            _strings(value, where)
            return value
        return _check(value, "str", where)
    if kind == "strs":
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list of strings, found {clip(value)}")
        return _strings(value, where)
    if kind == "entries":
        if not isinstance(value, list) or len(value) > MAX_ARRAY_ITEMS:
            raise ConfigError(f"{where}: expected a list of at most {MAX_ARRAY_ITEMS} entries, found {clip(value)}")
        for i, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}[{i}] must be a mapping (name, author, ...), found {clip(entry)}")
            for k in _ENTRY_KEYS:
                if k in entry and not isinstance(entry[k], str):
                    raise ConfigError(f"{where}[{i}].{k} must be a string, found {clip(entry[k])}")
        return value
    raise AssertionError(kind)  # pragma: no cover


def _strings(items: list[Any], where: str) -> list[str]:
    if len(items) > MAX_ARRAY_ITEMS:
        raise ConfigError(f"{where}: {len(items)} items, more than {MAX_ARRAY_ITEMS}")
    for i, x in enumerate(items):
        if not isinstance(x, str):
            raise ConfigError(f"{where}[{i}] must be a string, found {clip(x)}")
    return items
