"""Tokenizer export for GPT-2-style BPE (qwen2 family), computed with ``tokenizers`` alone (no transformers).

Tokens and token types follow llama.cpp's converter: every id below config ``vocab_size`` gets a token (holes
become ``[PAD{i}]``, UNUSED); added tokens that are marked special or look special (``<|...|>``, ``<｜...｜>``)
are CONTROL, other added tokens USER_DEFINED, everything else NORMAL. The pre-tokenizer name comes from the
sha256 of the ids of a fixed check text. Merges, special ids, add_bos/add_eos and the chat template come from
:mod:`l1quant.conversion.special_vocab`, which follows the reference converter's rules (see there why not gguf's class).

Example:
    >>> v = load_vocab("L1-Qwen-1.5B-Max", vocab_size=151936)  # doctest: +SKIP
    >>> v.pre, v.tokens[151646]                                 # doctest: +SKIP
    ('deepseek-r1-qwen', '<｜begin▁of▁sentence｜>')
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any, cast

import gguf

from l1quant.conversion.special_vocab import SpecialVocab, load_special_vocab
from l1quant.errors import TokenizerError, clip, read_json, read_text, require_address_space

log = logging.getLogger("l1quant")

#: The text whose token ids identify a BPE pre-tokenizer (llama.cpp's ``get_vocab_base_pre`` check text).
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

#: sha256(str(ids of CHECK_TEXT)) -> llama.cpp pre-tokenizer name. Only names llama.cpp implements belong here.
PRE_TOKENIZERS: dict[str, str] = {
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2 / Qwen2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3-Embedding
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",  # R1-Distill-Qwen, L1
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3, R1-Distill-Llama
}


#: Largest vocabulary accepted (16x the largest real ones, ~256k): the list of tokens is allocated up front.
MAX_VOCAB = 1 << 22


def looks_special(token: str) -> bool:
    """True for added tokens that ought to be CONTROL even when not flagged special (llama.cpp's heuristic).

    Example:
        >>> looks_special("<|im_end|>"), looks_special("<｜User｜>"), looks_special("<think>")
        (True, True, False)
    """
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


@dataclass
class Vocab:
    """Everything the tokenizer section of a GGUF holds."""

    tokens: list[str]
    token_types: list[int]
    pre: str
    check_hash: str
    special: SpecialVocab = field(repr=False)

    @property
    def merges(self) -> list[str]:
        return list(self.special.merges)


def _tokenizer(model_dir: Path) -> Any:
    path = model_dir / "tokenizer.json"
    if not path.exists():
        raise TokenizerError(f"{path}: not found (only fast BPE tokenizers, tokenizer.json, are supported)")
    text = read_text(path, TokenizerError)  # a regular file of bounded size: never a FIFO or /dev/zero
    return tokenizer_from_text(path, text)


#: Address space that loading a tokenizer.json and building its GGUF vocabulary take at their peak, per byte of the
#: file, plus a fixed margin. Measured (VmPeak growth through load_vocab): 26x for R1-Distill-Qwen's 5.0 MiB file,
#: 21x for Qwen3's 10.9 MiB; rounded up.
TOKENIZER_BYTES_PER_FILE_BYTE = 32
TOKENIZER_MARGIN_BYTES = 32 << 20


def tokenizer_from_text(path: Path, text: str) -> Any:
    """``tokenizers.Tokenizer`` from the text of ``path`` (a tokenizer.json), refused in one line when it cannot be.

    Raises :class:`TokenizerError` when it does not parse and :class:`~l1quant.errors.ResourceError` when a memory
    limit (``ulimit -v``/``-d``) leaves less than it would need: the Rust library aborts the whole process with
    "memory allocation of N bytes failed" when an allocation fails, so the headroom is checked first.
    """
    from tokenizers import Tokenizer

    require_address_space(TOKENIZER_BYTES_PER_FILE_BYTE * len(text) + TOKENIZER_MARGIN_BYTES, str(path))
    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises plain Exception subclasses with long messages
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TokenizerError(f"{path}: cannot be parsed: {msg}") from e


def pre_tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of ``str(ids)`` for :data:`CHECK_TEXT`, special tokens added as the tokenizer's post-processor does.

    Example:
        >>> pre_tokenizer_hash(Tokenizer.from_file("tokenizer.json"))  # doctest: +SKIP
        'b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5'
    """
    ids = tokenizer.encode(CHECK_TEXT).ids
    return sha256(str(ids).encode()).hexdigest()


#: Files whose content the vocab depends on (the cache key includes their identity and modification time).
_VOCAB_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json", "chat_template.jinja",
                "chat_template.json", "merges.txt", "special_tokens_map.json", "added_tokens.json")
_cache: dict[tuple[Any, ...], Vocab] = {}


def _files_key(d: Path) -> tuple[Any, ...]:
    out: list[Any] = [str(d.resolve())]
    for f in _VOCAB_FILES:
        try:
            st = (d / f).stat()
            out.append((f, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((f, None))
    extra = d / "additional_chat_templates"  # named templates, read beside chat_template.jinja
    out.append(tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in extra.glob("*.jinja")))
               if extra.is_dir() else None)
    return tuple(out)


def load_vocab(model_dir: str | Path, vocab_size: int, *, pre: str | None = None) -> Vocab:
    """Read ``tokenizer.json`` (+ tokenizer_config.json) and build the GGUF vocab for ``vocab_size`` ids.

    ``pre`` overrides the pre-tokenizer name (for a tokenizer whose check-text hash is not in the table).
    Parsing a 151k-token tokenizer takes a few seconds, so the result is kept for the process while the files
    are unchanged (``convert`` then ``verify --source`` read it once); treat the returned lists as read-only.

    Example:
        >>> load_vocab("model_dir", 151936, pre="qwen2").pre  # doctest: +SKIP
        'qwen2'
    """
    d = Path(model_dir)
    key = (_files_key(d), vocab_size, pre)
    hit = _cache.get(key)
    if hit is None:
        hit = _load_vocab(d, vocab_size, pre)
        if len(_cache) >= 4:
            _cache.pop(next(iter(_cache)))
        _cache[key] = hit
    _warn_pre_override(d, pre, hit.check_hash)
    return hit


def _warn_pre_override(d: Path, pre: str | None, check_hash: str) -> None:
    """Warn (logger ``l1quant``) when ``pre`` contradicts the pre-tokenizer the check-text hash identifies.

    ``--pre`` exists for tokenizers the table does not know; overriding a known one changes how llama.cpp splits
    text, silently. It is still written as asked (the user may know better), but never without a word.

    Example:
        >>> r1 = "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5"
        >>> _warn_pre_override(Path("m"), "deepseek-r1-qwen", r1)  # agrees with the hash: silent
    """
    detected = PRE_TOKENIZERS.get(check_hash)
    if pre is not None and detected is not None and pre != detected:
        log.warning("%s: --pre %s contradicts the pre-tokenizer its check-text hash identifies (%s, hash %s...); "
                    "writing %s as asked", d / "tokenizer.json", pre, detected, check_hash[:12], pre)


def _load_vocab(d: Path, vocab_size: int, pre: str | None) -> Vocab:
    if not 0 < vocab_size <= MAX_VOCAB:
        # the token list is built for every id below vocab_size: bound it before allocating from a config value
        raise TokenizerError(f"{d / 'config.json'}: vocab_size={vocab_size} is outside 1..{MAX_VOCAB}")
    tok = _tokenizer(d)
    vocab: dict[str, int] = tok.get_vocab(with_added_tokens=True)
    if not vocab:
        raise TokenizerError(f"{d / 'tokenizer.json'}: empty vocabulary")
    top = max(vocab.values())
    if top >= vocab_size:
        raise TokenizerError(
            f"{d / 'tokenizer.json'}: token id {top} does not fit config vocab_size={vocab_size}")
    chk = pre_tokenizer_hash(tok)
    name = pre or PRE_TOKENIZERS.get(chk)
    if name is None:
        raise TokenizerError(
            f"{d / 'tokenizer.json'}: unknown BPE pre-tokenizer (check-text hash {chk}); known: "
            f"{', '.join(sorted(set(PRE_TOKENIZERS.values())))}; pass --pre NAME if you know which one it is")

    added = {t.content: (i, t) for i, t in tok.get_added_tokens_decoder().items()}
    overrides = _config_added_tokens(d)
    named = named_special_tokens(d, {i for i, _ in added.values()})
    for content, where in named.items():
        if content not in added:
            # transformers would add it as a new special token (or re-type a base-vocabulary entry): the
            # reference's vocabulary would then differ in ways l1quant does not reproduce
            raise TokenizerError(f"{where} names {clip(content)} as a special token, but it is not one of "
                                 f"tokenizer.json's added tokens (not supported)")
    # Built id-indexed in bulk (one pass over the vocab dict, then only the holes and the few added tokens are
    # visited): a per-id loop with dict lookups cost ~0.5 s of every conversion for a 152k vocabulary.
    by_id: list[str | None] = [None] * vocab_size
    for s, i in vocab.items():
        by_id[i] = s
    types: list[int] = [int(gguf.TokenType.NORMAL)] * vocab_size
    for i in [i for i, s in enumerate(by_id) if s is None]:
        by_id[i] = f"[PAD{i}]"
        types[i] = int(gguf.TokenType.UNUSED)
    tokens: list[str] = by_id  # type: ignore[assignment]  # no None left
    for content, (i, t) in added.items():
        if not (0 <= i < vocab_size) or tokens[i] != content:
            continue  # the id holds another string: it is written as the vocabulary has it
        s = content
        special, normalized = t.special, t.normalized
        ov = overrides.get((i, content))
        if ov is not None and ov[:2] != (special, normalized):  # transformers re-adds only entries that differ
            special, normalized = ov[0] or ov[2], ov[1]
        if content in named:  # a token tokenizer_config (or special_tokens_map) names is special in transformers
            special = True
        if not normalized:
            # llama.cpp assumes CONTROL/USER_DEFINED tokens are pre-normalized: round-trip them as the
            # reference does (encode without specials, decode keeping specials).
            s = tok.decode(tok.encode(s, add_special_tokens=False).ids, skip_special_tokens=False)
        if special or looks_special(s):
            types[i] = int(gguf.TokenType.CONTROL)
        else:
            s = s.replace("\u2581", " ")  # pre-normalize user-defined spaces, as the reference does
            types[i] = int(gguf.TokenType.USER_DEFINED)
        tokens[i] = s

    special = _special_vocab(d)
    for typ, tid in special.ids.items():
        if not 0 <= tid < vocab_size:
            raise TokenizerError(f"{d}: special token {typ}={tid} is outside the vocabulary (size {vocab_size})")
    if not special.merges:
        raise TokenizerError(f"{d / 'tokenizer.json'}: no BPE merges found (model.merges is empty)")
    return Vocab(tokens, types, name, chk, special)


#: tokenizer_config.json keys transformers treats as named special tokens (``SPECIAL_TOKENS_ATTRIBUTES``); any other
#: ``*_token`` key with a string value is a "model-specific" special token, and the lists below are extra ones.
NAMED_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
EXTRA_TOKEN_KEYS = ("additional_special_tokens", "extra_special_tokens")


def _token_content(v: Any) -> str | None:
    v = v.get("content") if isinstance(v, dict) else v
    return v if isinstance(v, str) else None


def _named_in(obj: dict[str, Any], path: Path, *, custom: bool) -> dict[str, str]:
    """content -> "file: key" of every special token ``obj`` (tokenizer_config or special_tokens_map) names."""
    out: dict[str, str] = {}
    for key, v in obj.items():
        if key in EXTRA_TOKEN_KEYS:
            items = list(v.values()) if isinstance(v, dict) else v if isinstance(v, list) else []
            for item in items:
                c = _token_content(item)
                if c is not None:
                    out.setdefault(c, f"{path}: {key!r}")
        elif key in NAMED_TOKEN_KEYS or (custom and key.endswith("_token") and isinstance(v, str)):
            c = _token_content(v)
            if c is not None:
                out.setdefault(c, f"{path}: {key!r}")
    return out


def named_special_tokens(d: Path, added_ids: set[int]) -> dict[str, str]:
    """Every token transformers' AutoTokenizer (which the reference loads) makes special because a config file
    names it: content -> "file: key" naming where.

    tokenizer_config.json's ``*_token`` entries, ``additional_special_tokens`` and ``extra_special_tokens``
    always count. Without an ``added_tokens_decoder`` in it (or without the file) transformers takes its legacy
    path and also reads ``special_tokens_map.json`` (named tokens) and ``added_tokens.json`` (new tokens: an id
    not in ``added_ids``, the ids of tokenizer.json's added tokens, is refused).
    """
    tc_path, stm_path, at_path = d / "tokenizer_config.json", d / "special_tokens_map.json", d / "added_tokens.json"
    tc = read_json(tc_path, TokenizerError) if tc_path.exists() else {}
    tc = tc if isinstance(tc, dict) else {}
    named = _named_in(tc, tc_path, custom=True)
    if "added_tokens_decoder" in tc:
        return named  # transformers reads neither special_tokens_map.json nor added_tokens.json then
    if stm_path.exists():
        stm = read_json(stm_path, TokenizerError)
        if not isinstance(stm, dict):
            raise TokenizerError(f"{stm_path}: expected a JSON object, found {type(stm).__name__}")
        ast = stm.get("additional_special_tokens")
        if isinstance(ast, list) and any(isinstance(t, dict) for t in ast):
            # transformers 5 passes such objects on unconverted (only extra_special_tokens' are): the reference's
            # AutoTokenizer then fails ("Input must be a List[Union[str, AddedToken]]"), so there is no file to match
            raise TokenizerError(f"{stm_path}: 'additional_special_tokens' lists objects, which the reference's "
                                 "tokenizer loader rejects; list the token strings")
        for c, where in _named_in(stm, stm_path, custom=False).items():
            named.setdefault(c, where)
    if at_path.exists():
        at = read_json(at_path, TokenizerError)
        for content, tid in (at.items() if isinstance(at, dict) else [(None, None)]):
            if tid not in added_ids:
                raise TokenizerError(f"{at_path}: {clip(content)} -> {clip(tid)} is not one of tokenizer.json's added "
                                     "tokens; transformers (and so the reference) would add it (not supported)")
    return named


def _config_added_tokens(d: Path) -> dict[tuple[int, str], tuple[bool, bool, bool]]:
    """``(id, content) -> (special, normalized, named as a special token)`` from ``tokenizer_config.json``'s ``added_tokens_decoder``, as
    transformers applies it over ``tokenizer.json``'s added tokens (and so llama.cpp's converter, which reads
    ``tokenizer.added_tokens_decoder``): an entry marked special there (or named as one of the config's special
    tokens) is special, e.g. ``<think>``/``</think>`` -> CONTROL. Entries equal to tokenizer.json's change nothing.
    """
    path = d / "tokenizer_config.json"
    if not path.exists():
        return {}
    tc = read_json(path, TokenizerError)
    dec = tc.get("added_tokens_decoder") if isinstance(tc, dict) else None
    if not isinstance(dec, dict):
        return {}
    named: set[str] = set()
    for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        v = tc.get(key)
        v = v.get("content") if isinstance(v, dict) else v
        if isinstance(v, str):
            named.add(v)
    extra = tc.get("additional_special_tokens")
    if isinstance(extra, list):
        named |= {(cast(str, v.get("content")) if isinstance(v, dict) else v) for v in extra
                  if isinstance(v, str) or (isinstance(v, dict) and isinstance(v.get("content"), str))}
    out: dict[tuple[int, str], tuple[bool, bool, bool]] = {}
    for k, e in dec.items():
        if not (isinstance(k, str) and k.isdigit() and len(k) < 12 and isinstance(e, dict)):
            raise TokenizerError(f"{path}: added_tokens_decoder entry {clip(k)} is not an id -> token object")
        content, special, normalized = e.get("content"), e.get("special", False), e.get("normalized", True)
        if not isinstance(content, str) or not isinstance(special, bool) or not isinstance(normalized, bool):
            raise TokenizerError(f"{path}: added_tokens_decoder[{k}] needs a string 'content' and boolean "
                                 f"'special'/'normalized', found {clip(e)}")
        out[(int(k), content)] = (special, normalized, content in named)
    return out


def _special_vocab(d: Path) -> SpecialVocab:
    # load_special_vocab refuses a tokenizer_config.json that does not parse (rather than losing the bos/eos ids
    # and the chat template); config.json was validated by ModelConfig, generation_config.json by the metadata.
    sv = load_special_vocab(d)
    ct = sv.chat_template
    # gguf accepts any list here and would crash while writing it: a list must be named templates.
    if isinstance(ct, list) and not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                        and isinstance(c.get("template"), str) for c in ct):
        raise TokenizerError(f"{d / 'tokenizer_config.json'}: chat_template must be a string or a list of "
                             f"{{\"name\", \"template\"}} objects, found {clip(ct)}")
    return sv
