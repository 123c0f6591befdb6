"""Merges, special-token ids, add-bos/eos/sep flags, chat template and normalizer flags of a HF tokenizer folder.

Why not ``gguf.SpecialVocab``: the reference converter we must match (llama.cpp as vendored in
llama-cpp-python 0.3.36) ships a newer gguf-py than the PyPI ``gguf`` 0.19.0 release, and the two disagree on
exactly these keys: the newer one writes ``add_bos_token = add_eos_token = false`` for a ByteLevel
post-processor (original Qwen2.5 ``tokenizer.json``), treats a TemplateProcessing leading token that
tokenizer_config names only as an AddedToken object as the bos, and writes normalizer flags. Measured: on a
Qwen2.5 tokenizer with a ByteLevel post-processor, PyPI's class omits the two add_* keys the reference writes.
So the rules live here, written from the reference's behaviour, and are pinned by parity tests.

Order of the keys (the reference's): merges, special ids (tokenizer_config's ``*_token`` entries resolved through
``tokenizer.json``'s ``added_tokens``, in the order bos, eos, unk, sep, pad, cls, mask[, eot, eom]; then
config.json ``*_token_id`` as a fallback), add_* flags (post-processor first, then tokenizer_config), chat
template, normalizer flags. GGUF has no key for cls ids or add_cls/add_mask flags: those are dropped.

Example:
    >>> sv = load_special_vocab("L1-Qwen-1.5B-Max")   # doctest: +SKIP
    >>> sv.ids["bos"], sv.add["bos"]                    # doctest: +SKIP
    (151646, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from string import ascii_letters, digits
from typing import Any

import gguf

from l1quant.errors import TokenizerError, clip, read_json, read_text

TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
K = gguf.Keys.Tokenizer
#: special id type -> GGUF key (cls has none in GGUF: llama.cpp's writer skips it)
ID_KEYS = {"bos": K.BOS_ID, "eos": K.EOS_ID, "unk": K.UNK_ID, "sep": K.SEP_ID, "pad": K.PAD_ID,
           "mask": K.MASK_ID, "eot": K.EOT_ID, "eom": K.EOM_ID}
ADD_KEYS = {"bos": K.ADD_BOS, "eos": K.ADD_EOS, "sep": K.ADD_SEP}
NORMALIZER_LOWERCASE = "tokenizer.ggml.normalizer.lowercase"
NORMALIZER_STRIP_ACCENTS = "tokenizer.ggml.normalizer.strip_accents"


@dataclass
class SpecialVocab:
    """What the tokenizer folder says beyond the token list (insertion order of the dicts is the key order)."""

    merges: list[str] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    add: dict[str, bool] = field(default_factory=dict)
    chat_template: str | list[dict[str, Any]] | None = None
    normalizer_lowercase: bool | None = None
    normalizer_strip_accents: bool | None = None
    types: tuple[str, ...] = TYPES
    #: tokenizer_config's ``add_prefix_space`` (None when absent); written only by architectures whose converter
    #: writes it (:attr:`l1quant.arch.Arch.add_space_prefix`), before the tokenizer model key
    add_prefix_space: bool | None = None

    def set_id(self, typ: str, tid: Any, where: str) -> None:
        # the first source to name a type wins; non-integers are ignored, as the reference does
        if not isinstance(tid, int):
            return
        if tid < 0:
            raise TokenizerError(f"{where}: {typ} token id {tid} is negative")
        self.ids.setdefault(typ, tid)

    def add_to(self, gw: gguf.GGUFWriter) -> None:
        """Add the keys to ``gw`` in the reference's order.

        Example:
            >>> sv.add_to(gw)  # doctest: +SKIP
        """
        if self.merges:
            gw.add_token_merges(self.merges)
        for typ, tid in self.ids.items():
            if typ in ID_KEYS:
                gw.add_uint32(ID_KEYS[typ], tid)
        for typ, flag in self.add.items():
            if typ in ADD_KEYS:
                gw.add_bool(ADD_KEYS[typ], flag)
        self._add_chat_template(gw)
        if self.normalizer_lowercase is not None:
            gw.add_bool(NORMALIZER_LOWERCASE, bool(self.normalizer_lowercase))
        if self.normalizer_strip_accents is not None:
            gw.add_bool(NORMALIZER_STRIP_ACCENTS, bool(self.normalizer_strip_accents))

    def _add_chat_template(self, gw: gguf.GGUFWriter) -> None:
        ct = self.chat_template
        if ct is None:
            return
        if isinstance(ct, str):
            gw.add_string(K.CHAT_TEMPLATE, ct)
            return
        default = None
        names: list[str] = []
        for choice in ct:
            name = "".join(c if c in ascii_letters + digits else "_" for c in str(choice.get("name", "")))
            template = choice.get("template")
            if not name or template is None:
                continue
            if name == "default":
                default = template
            else:
                gw.add_string(K.CHAT_TEMPLATE_N.format(name=name), template)
                if name not in names:
                    names.append(name)
        if names:
            # The reference lists a Python set here: with string hashing randomised per process its order changes
            # from run to run (measured: three runs, three orders and three sha256s). We keep first-seen order,
            # deterministic, and verify compares this key as a set (check/fidelity.py, UNORDERED_KEYS).
            gw.add_array(K.CHAT_TEMPLATES, names)
        if default is not None:
            gw.add_string(K.CHAT_TEMPLATE, default)


def _merges(tok: dict[str, Any], path: Path) -> list[str]:
    merges = (tok.get("model") or {}).get("merges")
    if not isinstance(merges, list) or not merges:
        return []
    if all(isinstance(m, str) for m in merges):
        return list(merges)
    if all(isinstance(m, list) and len(m) == 2 and all(isinstance(s, str) for s in m) for m in merges):
        # transformers >= 4.45 writes pairs so that parts may contain spaces; GGUF keeps "a b" strings, with a
        # space inside a part written as U+0120 (space + 256), as llama.cpp does.
        return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in m) for m in merges]
    raise TokenizerError(f"{path}: model.merges is in an unknown format")


def _merges_txt(path: Path) -> list[str]:
    p = path / "merges.txt"
    if not p.exists():
        return []
    out = []
    lines = read_text(p, TokenizerError).splitlines()
    start = 1 if lines and lines[0].strip().startswith("#") else 0
    for line in lines[start:]:
        parts = line.strip().split(None, 3)
        if len(parts) == 2:
            out.append(f"{parts[0]} {parts[1]}")
    return out


def _normalizer(sv: SpecialVocab, norm: dict[str, Any]) -> None:
    kind = norm.get("type")
    if kind == "Lowercase":
        sv.normalizer_lowercase = True
    elif kind == "StripAccents":
        sv.normalizer_strip_accents = True
    elif kind == "BertNormalizer":
        if "lowercase" in norm:
            sv.normalizer_lowercase = norm["lowercase"]
        if "strip_accents" in norm:
            sv.normalizer_strip_accents = norm["strip_accents"]
    elif kind == "Sequence":
        for sub in norm.get("normalizers") or []:
            if isinstance(sub, dict):
                _normalizer(sv, sub)


def _special_id(item: Any, kind: str = "SpecialToken") -> Any:
    inner = item.get(kind) if isinstance(item, dict) else None
    return inner.get("id") if isinstance(inner, dict) else None


def _list_field(obj: dict[str, Any], key: str, default: list[Any], path: Path, where: str) -> list[Any]:
    """``obj[key]`` (``default`` when absent or null), refused in one line unless it is a list."""
    v = obj.get(key)
    if v is None:
        return default
    if not isinstance(v, list):
        raise TokenizerError(f"{path}: {where}.{key} is {clip(v)}, expected a list")
    return v


def _post_processor(sv: SpecialVocab, pp: dict[str, Any], tc: dict[str, Any] | None,
                    path: Path = Path("tokenizer.json")) -> None:
    """Derive add_bos/eos/sep from the post-processor (and complete tokenizer_config like the reference does).
    A field of the wrong kind (``"processors": 5``) is a :class:`TokenizerError` naming ``path``."""
    bos, cls, eos, sep = (tc or {}).get("bos_token"), (tc or {}).get("cls_token"), \
        (tc or {}).get("eos_token"), (tc or {}).get("sep_token")
    if not bos and cls and tc:
        tc["bos_token"] = bos = cls
    if not eos and sep and tc:
        tc["eos_token"] = eos = sep
    for proc in _list_field(pp, "processors", [pp], path, "post_processor"):
        if not isinstance(proc, dict):
            continue
        kind = proc.get("type")
        if kind == "ByteLevel":
            sv.add.setdefault("bos", False)
            sv.add.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            sv.add.update(bos=True, eos=True, sep=True)
            if not cls and tc:
                tc["cls_token"] = cls = (_list_field(proc, "cls", [bos], path, "post_processor") or [None])[0]
            if not sep and tc:
                tc["sep_token"] = sep = (_list_field(proc, "sep", [eos], path, "post_processor") or [None])[0]
        elif kind == "TemplateProcessing":
            single = _list_field(proc, "single", [], path, "post_processor")
            pair = _list_field(proc, "pair", [], path, "post_processor")
            first = last = None
            if len(single) > 1:
                first = _special_id(single[0])
                if first:
                    if not tc:
                        bos = first
                    elif first not in (bos, cls):
                        # tokenizer_config may name bos only as an AddedToken object: the leading template token
                        # then stands for bos (or cls)
                        if not bos:
                            tc["bos_token"] = bos = first
                        if not cls:
                            tc["cls_token"] = cls = first
                    sv.add["bos"] = first in (bos, cls)
                last = _special_id(single[-1])
                if last:
                    if not tc:
                        eos = last
                    elif last != eos:
                        for extra in ("eot", "eom"):
                            if extra not in sv.types:
                                sv.types = (*sv.types, extra)
                                tc[f"{extra}_token"] = eos
                                break
                        tc["eos_token"] = eos = last
                    sv.add["eos"] = last == eos
            if pair:
                start = 1 if first and _special_id(pair[0]) == first else 0
                stop = -1 if last and _special_id(pair[-1]) == last else None
                mid = pair[start:stop]
                if mid:
                    a, b = _special_id(mid[0], "Sequence"), _special_id(mid[-1], "Sequence")
                    inner = mid[1:-1]
                    if a == "A" and b == "B" and inner:
                        add_sep = False
                        entry = _special_id(inner[0])
                        if entry and entry in (sep, eos) and not last:
                            add_sep = True
                        if len(inner) == 2:
                            entry2 = _special_id(inner[1])
                            if entry2 and entry2 in (sep, eos):
                                add_sep = True
                        sv.add["sep"] = add_sep
                        if add_sep and not sep and tc:
                            tc["sep_token"] = eos


def load_special_vocab(model_dir: str | Path) -> SpecialVocab:
    """Read tokenizer.json, tokenizer_config.json, chat_template.jinja/.json and config.json of ``model_dir``.

    Example:
        >>> load_special_vocab("tests/data/qwen2.5-tokenizer").ids  # doctest: +SKIP
        {'bos': 151643, 'eos': 151645, 'pad': 151643}
    """
    d = Path(model_dir)
    sv = SpecialVocab()
    tok_path = d / "tokenizer.json"
    tok = read_json(tok_path, TokenizerError) if tok_path.exists() else None
    if tok is not None and not isinstance(tok, dict):
        raise TokenizerError(f"{tok_path}: expected a JSON object")
    added: list[Any] = []
    if tok is not None:
        sv.merges = _merges(tok, tok_path)
        if isinstance(tok.get("normalizer"), dict):
            _normalizer(sv, tok["normalizer"])
        added = tok.get("added_tokens") or []
    tc_path = d / "tokenizer_config.json"
    tc = read_json(tc_path, TokenizerError) if tc_path.exists() else None
    if tc is not None and not isinstance(tc, dict):
        raise TokenizerError(f"{tc_path}: expected a JSON object")
    if tok is not None and isinstance(tok.get("post_processor"), dict):
        _post_processor(sv, tok["post_processor"], tc, tok_path)
    if tc:
        _from_tokenizer_config(sv, d, tc, added)
    cfg_path = d / "config.json"
    if cfg_path.exists():
        cfg = read_json(cfg_path, TokenizerError)
        if isinstance(cfg, dict):
            tc_raw = cfg.get("text_config")
            text_cfg: dict[str, Any] = tc_raw if isinstance(tc_raw, dict) else {}
            for typ in sv.types:
                tid = cfg.get(f"{typ}_token_id")
                if tid is None:
                    tid = text_cfg.get(f"{typ}_token_id")
                sv.set_id(typ, tid, str(cfg_path))
    if not sv.merges:
        sv.merges = _merges_txt(d)
    return sv


def read_chat_template(d: Path, tc: dict[str, Any]) -> Any:
    """The folder's chat template as the pinned reference reads it -- the one reader for convert and for
    ``prompt --chat FOLDER``: ``tokenizer_config.json``'s ``chat_template`` (a string, or a list of named
    templates) wins; otherwise ``chat_template.jinja`` (with ``additional_chat_templates/*.jinja`` as named
    templates beside it, "default" first), otherwise ``chat_template.json``'s ``chat_template``. Returned as found
    (str, list of {name, template}, or None); the caller checks the type."""
    alt: str | list[dict[str, Any]] | None = None
    jinja, js = d / "chat_template.jinja", d / "chat_template.json"
    if jinja.exists():
        alt = read_text(jinja, TokenizerError)
        # in the folder's listing order, as the reference globs them: the chat_template.<name> keys are written in
        # this order (sorting would reorder them against the reference's file)
        extra = list((d / "additional_chat_templates").glob("*.jinja"))
        if extra:
            alt = [{"name": "default", "template": alt}] + [
                {"name": p.stem, "template": read_text(p, TokenizerError)} for p in extra]
    elif js.exists():
        obj = read_json(js, TokenizerError)
        alt = obj.get("chat_template") if isinstance(obj, dict) else None
    return tc.get("chat_template", alt)


def _from_tokenizer_config(sv: SpecialVocab, d: Path, tc: dict[str, Any], added: list[Any]) -> None:
    if tc.get("add_prefix_space") is not None:
        sv.add_prefix_space = bool(tc["add_prefix_space"])
    ct = read_chat_template(d, tc)
    if ct is None or isinstance(ct, (str, list)):
        sv.chat_template = ct
    for typ in sv.types:
        flag = tc.get(f"add_{typ}_token")
        if isinstance(flag, bool):
            sv.add.setdefault(typ, flag)  # the post-processor, when it said something, wins
        entry = tc.get(f"{typ}_token")
        if isinstance(entry, dict):
            entry = entry.get("content")
        if not isinstance(entry, str):
            continue
        tid = next((a.get("id") for a in added if isinstance(a, dict) and a.get("content") == entry), None)
        sv.set_id(typ, tid, str(d / "tokenizer_config.json"))
