"""CLIP byte-level BPE tokenizer in pure Python (stdlib only: Pyodide has no `regex`, no `tokenizers`).

It reproduces what transformers' `CLIPTokenizer` (the `tokenizers`-backed one, "CLIPTokenizerFast")
gives for a Stable Diffusion `tokenizer/` folder, id for id:

1. added tokens: the special tokens (bos/eos/unk/pad ...) and any added ones are cut out of the raw
   text first when they are `normalized: false`, and out of the normalized text when `normalized:
   true` (so SD 1.x matches a typed `<|endoftext|>` case-sensitively, SD 2.x also `<|ENDOFTEXT|>`,
   and SD 2.x, whose pad token is `!`, turns every `!` into the special token 0).
2. normalizer: NFC, every run of whitespace -> one space, lowercase (char by char, as Rust's
   `char::to_lowercase`: no final-sigma rule).
3. pre-tokenizer: CLIP's split pattern `<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|
   [\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+` (whitespace dropped), then byte-level's GPT-2 split, which only
   changes the literal `<|startoftext|>` / `<|endoftext|>` pieces (into `<|`, word, `|>`).
4. byte-level: UTF-8 bytes mapped to printable characters (GPT-2's `bytes_to_unicode`).
5. BPE over each piece with the merge ranks, `</w>` appended to the piece's last symbol.

`\\s`, `\\p{L}` and `\\p{N}` are the Oniguruma classes `tokenizers` uses: Unicode White_Space (which,
unlike Python's `str.isspace`, leaves out U+001C..U+001F) and the general categories L* and N* (`\\d`
would miss '½', '²', 'Ⅻ'). Python's `re` has no \\p{..}, so text is mapped char by char to a
stand-in ASCII string of the same length (letter -> 'z', number -> '0', other -> '#') and an ASCII
pattern runs over that; the pieces are sliced from the real text.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
import warnings

from .errors import ConfigError, ModelError

__all__ = ["CLIPTokenizer", "normalize", "pre_tokenize", "bytes_to_unicode"]

# --- normalizer and pre-tokenizer ------------------------------------------------------------------

# Oniguruma's Unicode \s: U+0009..U+000D, U+0085 and the categories Zs, Zl, Zp.
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WHITESPACE_RUN = re.compile(f"[{_WHITESPACE}]+")
_IS_WHITESPACE = re.compile(f"[{_WHITESPACE}]").fullmatch  # Rust's char::is_whitespace, the same set

# Code points that Python's unicodedata leaves unassigned (Unicode 14.0 in CPython 3.11, 15.0 in
# Pyodide's 3.12) but tokenizers 0.23 knows: Oniguruma's \p{L} / \p{N} are Unicode 16.0, Rust's
# lowercase is Unicode 17.0. Consulted only for category 'Cn'; tests/test_tokenizer.py rebuilds these
# tables from `tokenizers` and prints the new ones when they drift.
_NEW_LETTERS = (
    (0x1C89, 0x1C8A), (0xA7CB, 0xA7CD), (0xA7DA, 0xA7DC), (0x105C0, 0x105F3), (0x10D4A, 0x10D65),
    (0x10D6F, 0x10D85), (0x10EC2, 0x10EC4), (0x1123F, 0x11240), (0x11380, 0x11389), (0x1138B, 0x1138B),
    (0x1138E, 0x1138E), (0x11390, 0x113B5), (0x113B7, 0x113B7), (0x113D1, 0x113D1), (0x113D3, 0x113D3),
    (0x11BC0, 0x11BE0), (0x11F02, 0x11F02), (0x11F04, 0x11F10), (0x11F12, 0x11F33), (0x1342F, 0x1342F),
    (0x13441, 0x13446), (0x13460, 0x143FA), (0x16100, 0x1611D), (0x16D40, 0x16D6C), (0x18CFF, 0x18CFF),
    (0x1B132, 0x1B132), (0x1B155, 0x1B155), (0x1DF25, 0x1DF2A), (0x1E030, 0x1E06D), (0x1E4D0, 0x1E4EB),
    (0x1E5D0, 0x1E5ED), (0x1E5F0, 0x1E5F0), (0x2B739, 0x2B739), (0x2EBF0, 0x2EE5D), (0x31350, 0x323AF),
)
_NEW_NUMBERS = (
    (0x10D40, 0x10D49), (0x116D0, 0x116E3), (0x11BF0, 0x11BF9), (0x11F50, 0x11F59), (0x16130, 0x16139),
    (0x16D70, 0x16D79), (0x1CCF0, 0x1CCF9), (0x1D2C0, 0x1D2D3), (0x1E4F0, 0x1E4F9), (0x1E5F1, 0x1E5FA),
)
# (first, last, what the first lowercases to): a run of capitals whose small letters follow in step.
_NEW_LOWER_RUNS = (
    (0x1C89, 0x1C89, 0x1C8A), (0xA7CB, 0xA7CB, 0x0264), (0xA7CC, 0xA7CC, 0xA7CD), (0xA7CE, 0xA7CE, 0xA7CF),
    (0xA7D2, 0xA7D2, 0xA7D3), (0xA7D4, 0xA7D4, 0xA7D5), (0xA7DA, 0xA7DA, 0xA7DB), (0xA7DC, 0xA7DC, 0x019B),
    (0x10D50, 0x10D65, 0x10D70), (0x16EA0, 0x16EB8, 0x16EBB),
)
_NEW_LOWER = {cp: first_lower + cp - first for first, last, first_lower in _NEW_LOWER_RUNS
              for cp in range(first, last + 1)}


def _in_ranges(cp: int, ranges) -> bool:
    return any(a <= cp <= b for a, b in ranges)


# CLIP's split pattern, over the stand-in string (after normalization the only whitespace is ' ').
_SPLIT = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^ a-z0-9]+")
_LITERALS = ("<|startoftext|>", "<|endoftext|>")


class _StandIn(dict):
    """str.translate table: ASCII maps to itself, other code points to 'z' (\\p{L}), '0' (\\p{N}) or '#'.

    'z' and '#' occur in none of the pattern's literals ('s, <|startoftext|> ...), so a stand-in
    never completes one; e.g. "<|stärtoftext|>" must not match.
    """

    def __missing__(self, cp: int) -> str:
        if cp < 128:
            ch = chr(cp)
        else:
            cat = unicodedata.category(chr(cp))
            if cat == "Cn":
                cat = "L" if _in_ranges(cp, _NEW_LETTERS) else "N" if _in_ranges(cp, _NEW_NUMBERS) else "C"
            ch = "z" if cat[0] == "L" else "0" if cat[0] == "N" else "#"
        self[cp] = ch
        return ch


_STAND_IN = _StandIn()


def normalize(text: str) -> str:
    """CLIPTokenizerFast's normalizer: NFC, whitespace runs -> ' ', lowercase."""
    text = _WHITESPACE_RUN.sub(" ", unicodedata.normalize("NFC", text))
    if "\u03a3" in text:
        # str.lower() turns a word-final capital sigma into 'ς'; Rust lowercases char by char ('σ').
        text = "".join([c.lower() for c in text])
    else:
        text = text.lower()
    return text if text.isascii() else text.translate(_NEW_LOWER)


def pre_tokenize(normalized: str) -> list[str]:
    """Normalized text -> the pieces BPE works on (not yet byte-encoded), whitespace dropped."""
    stand_in = normalized.translate(_STAND_IN)
    pieces = []
    for m in _SPLIT.finditer(stand_in):
        piece = normalized[m.start() : m.end()]
        if piece in _LITERALS:
            # byte-level's GPT-2 split (` ?[^\s\p{L}\p{N}]+`, ` ?\p{L}+`) cuts the literal in three.
            pieces += (piece[:2], piece[2:-2], piece[-2:])
        else:
            pieces.append(piece)
    return pieces


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_ENCODER = bytes_to_unicode()
# Latin-1 decoding turns byte b into code point b; this table then maps it to its printable stand-in.
_BYTE_TABLE = str.maketrans({b: c for b, c in _BYTE_ENCODER.items()})
_BYTE_DECODER = {c: b for b, c in _BYTE_ENCODER.items()}


# --- added tokens ----------------------------------------------------------------------------------


class _AddedToken:
    """One added token (special or not), with the matching flags of tokenizers' AddedToken."""

    __slots__ = ("content", "id", "special", "normalized", "lstrip", "rstrip", "single_word")

    def __init__(self, content, id, special, normalized, lstrip=False, rstrip=False, single_word=False):
        self.content, self.id, self.special, self.normalized = content, id, special, normalized
        self.lstrip, self.rstrip, self.single_word = lstrip, rstrip, single_word


def _is_word_char(c: str) -> bool:
    """Rust regex's Unicode \\w (alphabetic, marks, decimal digits, connector punctuation, joiners)."""
    cat = unicodedata.category(c)
    return cat[0] in "LM" or cat in ("Nd", "Nl", "Pc") or c in "\u200c\u200d"


def _split_added(text: str, tokens: list[_AddedToken]):
    """Cut `text` at the added tokens -> [(segment, None) | (content, token)], as tokenizers does.

    Matching is leftmost-longest (tokenizers uses an Aho-Corasick automaton with LeftmostLongest).
    """
    if not tokens or not text:
        return [(text, None)] if text else []
    out = []
    pos = 0  # where the next unmatched segment starts
    search = 0
    while True:
        best, best_at = None, -1
        for tok in tokens:
            at = text.find(tok.content, search)
            if at >= 0 and (best is None or at < best_at or (at == best_at and len(tok.content) > len(best.content))):
                best, best_at = tok, at
        if best is None:
            break
        start, stop = best_at, best_at + len(best.content)
        if best.single_word and (
            (start > 0 and _is_word_char(text[start - 1])) or (stop < len(text) and _is_word_char(text[stop]))
        ):
            search = stop  # tokenizers' matcher resumes after the discarded match
            continue
        if best.lstrip:
            while start > pos and _IS_WHITESPACE(text[start - 1]):
                start -= 1
        if best.rstrip:
            while stop < len(text) and _IS_WHITESPACE(text[stop]):
                stop += 1
        if start > pos:
            out.append((text[pos:start], None))
        out.append((text[start:stop], best))
        pos = search = stop
    if pos < len(text):
        out.append((text[pos:], None))
    return out


# --- the tokenizer ---------------------------------------------------------------------------------

_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_DEFAULTS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
             "pad_token": "<|endoftext|>"}
_CACHE_LIMIT = 10_000


class CLIPTokenizer:
    """CLIP's BPE tokenizer: text -> ids for the text encoder, (max_length,) ints.

    Build it with `from_folder(model / "tokenizer")` or `from_files({name: text})` (the browser hands
    in file contents). `encode(prompt)` gives `[bos, ids..., eos, pad...]` of length 77.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], added_tokens: list[_AddedToken],
                 special: dict[str, str], model_max_length: int = 77):
        self.encoder = vocab
        self.decoder = {i: t for t, i in vocab.items()}
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.added_tokens = added_tokens
        for tok in added_tokens:
            self.decoder[tok.id] = tok.content
        self._raw_added = [t for t in added_tokens if not t.normalized]
        # tokenizers normalizes a normalized token's content before matching it in normalized text.
        self._norm_added = [
            _AddedToken(normalize(t.content), t.id, t.special, True, t.lstrip, t.rstrip, t.single_word)
            for t in added_tokens if t.normalized
        ]
        self._special_ids = {t.id for t in added_tokens if t.special}
        ids = {t.content: t.id for t in added_tokens}
        self.special_tokens = dict(special)
        self.bos_token, self.eos_token = special["bos_token"], special["eos_token"]
        self.pad_token, self.unk_token = special["pad_token"], special["unk_token"]
        self.bos_token_id, self.eos_token_id = ids[self.bos_token], ids[self.eos_token]
        self.pad_token_id, self.unk_token_id = ids[self.pad_token], ids[self.unk_token]
        self.model_max_length = model_max_length
        self._cache: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {}

    # -- loading --

    @classmethod
    def from_folder(cls, tokenizer_dir) -> "CLIPTokenizer":
        """Read a diffusers `tokenizer/` folder: vocab.json + merges.txt (or tokenizer.json), and
        special_tokens_map.json / tokenizer_config.json where present."""
        names = ("vocab.json", "merges.txt", "tokenizer.json", "special_tokens_map.json", "tokenizer_config.json")
        if not os.path.isdir(tokenizer_dir):
            raise ModelError(f"{tokenizer_dir} is not a folder: expected a model's tokenizer/ folder")
        files = {}
        for name in names:
            path = os.path.join(tokenizer_dir, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    files[name] = f.read()
        return cls.from_files(files, where=str(tokenizer_dir))

    @classmethod
    def from_files(cls, files: dict, where: str = "tokenizer") -> "CLIPTokenizer":
        """Build from file contents keyed by file name (str or UTF-8 bytes); names as in from_folder."""
        files = {k: v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else v for k, v in files.items()}

        def load_json(name):
            if name not in files:
                return None
            try:
                return json.loads(files[name])
            except ValueError as e:
                raise ModelError(f"{where}/{name} is not valid JSON ({e})") from None

        config = load_json("tokenizer_config.json") or {}
        special_map = load_json("special_tokens_map.json") or {}
        full = None

        # The BPE tables: vocab.json + merges.txt as on the Hub, else tokenizer.json (transformers 5
        # saves only that one).
        if "vocab.json" in files and "merges.txt" in files:
            vocab = load_json("vocab.json")
            merges = []
            for line in files["merges.txt"].split("\n"):
                if line.startswith("#version") or not line.strip():
                    continue
                a, _, b = line.rstrip("\r").partition(" ")
                merges.append((a, b))
        elif "tokenizer.json" in files:
            full = load_json("tokenizer.json")
            model = full.get("model") or {}
            if model.get("type") != "BPE":
                raise ModelError(f"{where}/tokenizer.json holds a {model.get('type')} model: expected BPE")
            vocab = model["vocab"]
            merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
        else:
            raise ModelError(f"{where} has no vocab.json + merges.txt (nor tokenizer.json): "
                             "a CLIP tokenizer needs its BPE tables")

        # Added tokens as transformers 5 sets them up: the saved list (tokenizer_config's
        # added_tokens_decoder, else tokenizer.json's added_tokens), then the named special tokens
        # (special_tokens_map.json over tokenizer_config.json, the map only read when there is no
        # added_tokens_decoder) in bos, eos, unk, sep, pad, cls, mask order. A named token that is
        # a plain string is special and not normalized; a token defined twice keeps its last
        # definition, so SD 1.x's string pad "<|endoftext|>" makes eos match un-normalized text.
        saved: dict[str, _AddedToken] = {}
        if "added_tokens_decoder" in config:
            entries = [dict(v, id=int(k)) for k, v in config["added_tokens_decoder"].items()]
            special_map = {}
        elif full is not None or "tokenizer.json" in files:
            full = full if full is not None else load_json("tokenizer.json")
            entries = list(full.get("added_tokens") or [])
        else:
            entries = []
        for e in sorted(entries, key=lambda e: e["id"]):
            special = e.get("special", False)
            saved[e["content"]] = _AddedToken(
                # tokenizers gives a token that is already in the vocabulary its vocabulary id
                e["content"], vocab.get(e["content"], e["id"]), special, e.get("normalized", not special),
                e.get("lstrip", False), e.get("rstrip", False), e.get("single_word", False))

        added: dict[str, _AddedToken] = dict(saved)

        def token_id(content):
            if content in saved:
                return saved[content].id
            if content in vocab:
                return vocab[content]
            raise ModelError(f"{where}: special token {content!r} is neither in the vocabulary nor an added token")

        def define(value):
            if isinstance(value, dict):
                content = value["content"]
                if content in saved:
                    tok = saved[content]
                else:
                    tok = _AddedToken(content, token_id(content), True, value.get("normalized", False),
                                      value.get("lstrip", False), value.get("rstrip", False),
                                      value.get("single_word", False))
            else:
                content = str(value)
                tok = saved.get(content) or _AddedToken(content, token_id(content), True, False)
            added.pop(content, None)  # re-insert: the last definition wins
            added[content] = tok
            return content

        special = {}
        for key in _NAMED_SPECIAL:
            value = special_map.get(key, config.get(key, _DEFAULTS.get(key)))
            if value is not None:
                special[key] = define(value)
        extra = special_map.get("additional_special_tokens", config.get("additional_special_tokens")) or []
        extra += special_map.get("extra_special_tokens", config.get("extra_special_tokens")) or []
        for value in extra if isinstance(extra, list) else []:
            define(value)

        max_len = config.get("model_max_length", 77)
        if not isinstance(max_len, int) or max_len > 10**6:
            max_len = 77  # transformers writes 1e30 for "no limit"; CLIP's text encoder has 77 positions
        return cls(vocab, merges, list(added.values()), special, max_len)

    # -- BPE --

    def _bpe(self, piece: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """One byte-encoded piece -> its BPE tokens and ids (cached)."""
        hit = self._cache.get(piece)
        if hit is not None:
            return hit
        word = list(piece)
        word[-1] += "</w>"
        ranks = self.ranks
        while len(word) > 1:
            best, best_rank = -1, 1 << 62
            for i in range(len(word) - 1):
                r = ranks.get((word[i], word[i + 1]))
                if r is not None and r < best_rank:
                    best, best_rank = i, r
            if best < 0:
                break
            first, second = word[best], word[best + 1]
            merged, i, n = word[:best], best, len(word)
            while i < n:
                if i < n - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        unk = self.unk_token_id
        result = (tuple(word), tuple(self.encoder.get(t, unk) for t in word))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[piece] = result
        return result

    def _run(self, text: str) -> tuple[list[str], list[int]]:
        """Prompt -> (tokens, ids), without bos/eos."""
        tokens, ids = [], []
        for segment, tok in _split_added(text, self._raw_added):
            if tok is not None:
                tokens.append(tok.content)
                ids.append(tok.id)
                continue
            for part, tok2 in _split_added(normalize(segment), self._norm_added):
                if tok2 is not None:
                    tokens.append(tok2.content)
                    ids.append(tok2.id)
                    continue
                for piece in pre_tokenize(part):
                    t, i = self._bpe(piece.encode("utf-8").decode("latin-1").translate(_BYTE_TABLE))
                    tokens += t
                    ids += i
        return tokens, ids

    # -- public API --

    def tokenize(self, text: str) -> list[str]:
        """The prompt's BPE tokens (strings like 'photo</w>'), without bos/eos."""
        return self._run(text)[0]

    def count(self, text: str) -> int:
        """How many tokens the prompt takes, without bos/eos (model_max_length - 2 fit)."""
        return len(self._run(text)[1])

    def token_ids(self, text: str) -> list[int]:
        """The prompt's ids without bos/eos and uncut, what transformers gives for
        `tokenizer(text, add_special_tokens=False)` (prompt_syntax packs them into chunks)."""
        return self._run(text)[1]

    def encode(self, text: str, max_length: int | None = None, pad: bool = True):
        """Prompt -> [bos, ids..., eos] cut to max_length (eos kept last) and padded to it with pad id,
        as transformers' `tokenizer(text, padding="max_length", truncation=True)`. Dropping tokens
        emits a warning naming how many. (The pipeline packs long prompts into several 77-token
        chunks instead: prompt_syntax.PromptChunker.)"""
        max_length = self.model_max_length if max_length is None else max_length
        if max_length < 2:
            raise ConfigError(f"max_length={max_length}: must be at least 2 (room for bos and eos)")
        ids = self._run(text)[1]
        room = max_length - 2
        dropped = max(0, len(ids) - room)
        if dropped:
            lost = self.decode(ids[room:], skip_special_tokens=False)
            if len(lost) > 60:
                lost = lost[:57] + "..."
            warnings.warn(
                f"prompt truncated: {dropped} of its {len(ids)} tokens dropped because CLIP can only handle "
                f"sequences up to {max_length} tokens ({room} for the prompt); lost: {lost!r}",
                stacklevel=2)
            ids = ids[:room]
        out = [self.bos_token_id, *ids, self.eos_token_id]
        if pad:
            out += [self.pad_token_id] * (max_length - len(out))
        return out

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """ids -> text, as transformers' CLIPTokenizer.decode: '</w>' becomes a space, ends stripped."""
        skip = self._special_ids if skip_special_tokens else ()
        raw = bytearray()
        for i in ids:
            if i in skip:
                continue
            token = self.decoder.get(i)
            if token is None:
                raise ValueError(f"token id {i} is neither in the vocabulary nor an added token")
            try:
                raw += bytes([_BYTE_DECODER[c] for c in token])
            except KeyError:  # tokenizers' ByteLevel decoder keeps such a token's own UTF-8 bytes
                raw += token.encode("utf-8")
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()
