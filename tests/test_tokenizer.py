"""sdweb.tokenizer against the independent reference: transformers' CLIPTokenizerFast (HF `tokenizers`).

Both read the same folder: the real CLIP BPE tables (tests/data/clip-tokenizer) beside the real
special_tokens_map.json / tokenizer_config.json of SD 1.5 (pad `<|endoftext|>`) or SD 2.1-base
(pad `!`). The corpus is tests/data/prompts.txt (scripts/make_prompt_corpus.py writes it).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import unicodedata
import warnings
from pathlib import Path

import pytest

from sdweb import tokenizer as tk
from sdweb.errors import ConfigError, ModelError
from sdweb.tokenizer import CLIPTokenizer

ROOT = Path(__file__).resolve().parent.parent
TABLES = ROOT / "tests" / "data" / "clip-tokenizer"
CONFIGS = ROOT / "tests" / "data" / "real-configs"
CORPUS = ROOT / "tests" / "data" / "prompts.txt"

transformers = pytest.importorskip("transformers")


def read_corpus(path: Path = CORPUS) -> list[str]:
    """The corpus format (see its header): split on "\\n" only; #%empty, #%json <str>, #% comments."""
    prompts = []
    for line in path.read_bytes().decode("utf-8").split("\n")[:-1]:
        if line == "#%empty":
            prompts.append("")
        elif line.startswith("#%json "):
            prompts.append(json.loads(line[len("#%json "):]))
        elif not line.startswith("#%"):
            prompts.append(line)
    return prompts


PROMPTS = read_corpus()


def make_folder(dest: Path, model: str | None, drop=(), extra: dict | None = None) -> Path:
    """vocab.json + merges.txt, the tokenizer configs of `model` (less `drop`), files from `extra`."""
    dest.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(TABLES / name, dest / name)
    if model:
        for f in (CONFIGS / model / "tokenizer").iterdir():
            if f.name not in drop:
                shutil.copy(f, dest / f.name)
    for name, content in (extra or {}).items():
        (dest / name).write_text(json.dumps(content), encoding="utf-8")
    return dest


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("tok")
    return {
        "sd15": make_folder(base / "sd15", "stable-diffusion-v1-5"),
        "sd21": make_folder(base / "sd21", "stable-diffusion-2-1-base"),
    }


@pytest.fixture(scope="module")
def pairs(folders):
    """name -> (ours, reference); the reference is the tokenizers-backed ("fast") class."""
    out = {}
    for name, folder in folders.items():
        ref = transformers.CLIPTokenizerFast.from_pretrained(folder)
        assert ref.is_fast and hasattr(ref, "backend_tokenizer")
        out[name] = (CLIPTokenizer.from_folder(folder), ref)
    return out


def mismatches(ours: CLIPTokenizer, ref, prompts, max_length=77) -> list[tuple[str, list, list]]:
    """Prompts whose padded, truncated ids differ from the reference's (as diffusers calls it)."""
    want = ref(prompts, padding="max_length", max_length=max_length, truncation=True).input_ids
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = [ours.encode(p, max_length=max_length) for p in prompts]
    return [(p, w, g) for p, w, g in zip(prompts, want, got) if w != g]


def describe(bad) -> str:
    lines = [f"{len(bad)} prompts differ; first ones:"]
    for p, w, g in bad[:5]:
        k = next((i for i, (a, b) in enumerate(zip(w, g)) if a != b), min(len(w), len(g)))
        lines.append(f"  {p[:80]!r}: at {k} want {w[k:k + 6]} got {g[k:k + 6]}")
    return "\n".join(lines)


# --- the corpus --------------------------------------------------------------------------------


def test_corpus_is_what_the_script_writes():
    spec = importlib.util.spec_from_file_location("make_prompt_corpus", ROOT / "scripts" / "make_prompt_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    prompts = mod.build()
    assert mod.render(prompts).encode("utf-8") == CORPUS.read_bytes(), "rerun scripts/make_prompt_corpus.py"
    assert read_corpus() == prompts


def test_corpus_covers_the_odd_cases(pairs):
    ours, _ = pairs["sd15"]
    assert len(PROMPTS) >= 2000 and CORPUS.stat().st_size < 1_000_000
    assert "" in PROMPTS and any(p and not p.strip() for p in PROMPTS)
    assert sum(ours.count(p) > 75 for p in PROMPTS) >= 100  # truncation
    for needle in ("é", "e\u0301", "漢", "한", "👨‍👩‍👧‍👦", "🏽", "½", "²", "Ⅻ", "٣", "!!!", "(((", "'s", "’",
                   "<|endoftext|>", "<|ENDOFTEXT|>", "\t", "  ", "\x00", "\u2028", "https://", "<b>", "def "):
        assert any(needle in p for p in PROMPTS), needle


# --- ids against transformers ------------------------------------------------------------------


@pytest.mark.parametrize("model", ["sd15", "sd21"])
def test_corpus_ids_match_transformers(pairs, model):
    ours, ref = pairs[model]
    bad = mismatches(ours, ref, PROMPTS)
    assert not bad, describe(bad)


@pytest.mark.parametrize("model", ["sd15", "sd21"])
def test_corpus_tokens_and_counts_match_transformers(pairs, model):
    """Untruncated: token strings and counts, for every corpus prompt."""
    ours, ref = pairs[model]
    want = ref(PROMPTS, add_special_tokens=False).input_ids
    for prompt, ids in zip(PROMPTS, want):
        assert ours.tokenize(prompt) == ref.convert_ids_to_tokens(ids), repr(prompt)
        assert ours.count(prompt) == len(ids), repr(prompt)


def test_special_token_ids_follow_transformers(pairs):
    for name, pad in (("sd15", 49407), ("sd21", 0)):
        ours, ref = pairs[name]
        assert (ours.pad_token_id, ours.bos_token_id, ours.eos_token_id) == (pad, 49406, 49407)
        assert (ref.pad_token_id, ref.bos_token_id, ref.eos_token_id) == (pad, 49406, 49407)
        assert ours.model_max_length == ref.model_max_length == 77
        assert ours.pad_token == ref.pad_token


def test_published_clip_ids(pairs):
    ours, _ = pairs["sd15"]
    assert ours.encode("a photo of a cat", pad=False) == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ours.encode("a photo of a cat")[7:] == [49407] * 70
    assert pairs["sd21"][0].encode("a photo of a cat")[7:] == [0] * 70


TRICKY = [
    "", " ", "a", "!", "!!!", "wow!!! nice!", "a<|endoftext|>b", "<|ENDOFTEXT|> x", "<|StartOfText|>y", "<|endoftext",
    "a <|startoftext|> b", "<cat-toy> on a beach", "<Cat-Toy>", "a  <MASK>  b", "<MASK>", "a <sks> dog",
    "a<sks>dog", "<sks>_<sks> é<sks> <sks>\u0301 <SKS>!", "ΟΔΟΣ İ", "e\u0301 café",
    "don't IT'S", "1,024x768 ½ Ⅻ ٣", "👨‍👩‍👧 🏳️‍🌈", "\tx\u3000y\u2028z\x1c", "masterpiece " * 90,
]


def variant_folders(base: Path) -> dict[str, Path]:
    """Ways a tokenizer folder turns up: one config file, none, a saved added_tokens_decoder (with a
    textual-inversion token, an lstrip/rstrip one and a single_word one), special tokens spelled as
    strings or dicts."""
    sd21 = CONFIGS / "stable-diffusion-2-1-base" / "tokenizer"
    config21 = json.loads((sd21 / "tokenizer_config.json").read_text())
    map21 = json.loads((sd21 / "special_tokens_map.json").read_text())
    flags = {"lstrip": False, "rstrip": False, "single_word": False}
    decoder = {
        "0": {"content": "!", "normalized": False, "special": True, **flags},
        "49406": {"content": "<|startoftext|>", "normalized": True, "special": True, **flags},
        "49407": {"content": "<|endoftext|>", "normalized": False, "special": True, **flags},
        "49408": {"content": "<Cat-Toy>", "normalized": True, "special": False, **flags},
        "49409": {"content": "<MASK>", "normalized": False, "special": True, **flags, "lstrip": True, "rstrip": True},
        "49410": {"content": "<sks>", "normalized": True, "special": False, **flags, "single_word": True},
    }
    eos = dict(map21["eos_token"])
    return {
        "config-only": make_folder(base / "config-only", "stable-diffusion-2-1-base",
                                   drop=("special_tokens_map.json",)),
        "map-only": make_folder(base / "map-only", "stable-diffusion-2-1-base", drop=("tokenizer_config.json",)),
        "tables-only": make_folder(base / "tables-only", None),
        "added-tokens-decoder": make_folder(base / "decoder", "stable-diffusion-2-1-base", extra={
            "tokenizer_config.json": {**config21, "added_tokens_decoder": decoder}}),
        "last-definition-wins": make_folder(base / "last", None, extra={
            "special_tokens_map.json": {**map21, "eos_token": "<|endoftext|>", "pad_token": eos},
            "tokenizer_config.json": {"model_max_length": 77}}),
        "normalized-pad": make_folder(base / "normalized-pad", "stable-diffusion-v1-5", extra={
            "special_tokens_map.json": {**map21, "pad_token": {"content": "!", "normalized": True}}}),
    }


def test_folder_variants_match_transformers(tmp_path):
    folders = variant_folders(tmp_path)
    # transformers 5 saves only tokenizer.json + tokenizer_config.json: read that layout too.
    for name in ("stable-diffusion-v1-5", "stable-diffusion-2-1-base"):
        ref = transformers.CLIPTokenizerFast.from_pretrained(make_folder(tmp_path / f"src-{name}", name))
        ref.save_pretrained(tmp_path / f"saved-{name}")
        assert not (tmp_path / f"saved-{name}" / "vocab.json").exists()
        folders[f"saved-{name}"] = tmp_path / f"saved-{name}"
    for name, folder in folders.items():
        ref = transformers.CLIPTokenizerFast.from_pretrained(folder)
        ours = CLIPTokenizer.from_folder(folder)
        assert (ours.pad_token_id, ours.bos_token_id, ours.eos_token_id) == (
            ref.pad_token_id, ref.bos_token_id, ref.eos_token_id), name
        bad = mismatches(ours, ref, TRICKY + PROMPTS[:300])
        assert not bad, f"{name}: {describe(bad)}"


def test_from_files_takes_contents(folders):
    files = {f.name: f.read_bytes() for f in folders["sd21"].iterdir()}
    ours = CLIPTokenizer.from_files(files)
    assert ours.pad_token_id == 0 and ours.encode("a photo of a cat!", pad=False)[-2:] == [0, 49407]


def test_missing_or_bad_files_raise_model_error(tmp_path):
    with pytest.raises(ModelError, match="vocab.json"):
        CLIPTokenizer.from_folder(tmp_path)
    with pytest.raises(ModelError, match="not a folder"):
        CLIPTokenizer.from_folder(tmp_path / "nope")
    folder = make_folder(tmp_path / "bad", None)
    (folder / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(ModelError, match="tokenizer_config.json"):
        CLIPTokenizer.from_folder(folder)


# --- truncation --------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [" ".join(["cat"] * n) for n in (74, 75, 76, 77)] + ["cat!!! dog, " * 40])
def test_truncation_warns_with_the_dropped_count(pairs, prompt):
    ours, ref = pairs["sd21"]
    total = len(ref(prompt, add_special_tokens=False).input_ids)
    dropped = max(0, total - 75)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = ours.encode(prompt)
    assert ids == ref(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    if dropped:
        assert len(caught) == 1 and f"{dropped} of its {total} tokens" in str(caught[0].message)
        assert "\n" not in str(caught[0].message)
        assert caught[0].filename == __file__  # points at the caller
    else:
        assert not caught


def test_token_ids_uncut_over_the_corpus(pairs):
    """token_ids (what the prompt chunker packs) is transformers' add_special_tokens=False, uncut."""
    ours, ref = pairs["sd15"]
    for prompt, ids in zip(PROMPTS, ref(PROMPTS, add_special_tokens=False).input_ids):
        assert ours.token_ids(prompt) == ids, repr(prompt)


def test_shorter_max_length_and_no_padding(pairs):
    ours, ref = pairs["sd15"]
    bad = mismatches(ours, ref, PROMPTS[:400], max_length=16)
    assert not bad, describe(bad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ours.encode("a photo of a cat " * 20, max_length=10, pad=False)[-1] == 49407
        assert len(ours.encode("a photo of a cat " * 20, max_length=10, pad=False)) == 10
    with pytest.raises(ConfigError, match="max_length"):
        ours.encode("x", max_length=1)


# --- decode ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["sd15", "sd21"])
def test_decode_matches_transformers(pairs, model):
    ours, ref = pairs[model]
    for prompt in TRICKY + PROMPTS[::50]:
        ids = ref(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), repr(prompt)
    # a lone continuation byte: invalid UTF-8, replaced as Rust's from_utf8_lossy does
    ids = [ours.encoder["\u0120"], 320, ours.encoder["Ã"]]
    assert ours.decode(ids) == ref.decode(ids)


def test_decode_round_trip(pairs):
    ours, _ = pairs["sd15"]
    for prompt, back in [("a photo of a cat", "a photo of a cat"), ("Café  AU lait!!", "café au lait !!"),
                         ("漢字 かな 👍🏽", "漢字 かな 👍🏽"), ("don't stop", "don 't stop"), ("", "")]:
        assert ours.decode(ours.encode(prompt)) == back


# --- every code point: normalizer and pre-tokenizer --------------------------------------------


def test_every_code_point_normalizes_and_splits_like_tokenizers(pairs):
    """Each code point c, as "q" + c + c + "q": a letter joins the q-run, a number gives two
    pieces, anything else one, whitespace none; so a wrong class, case mapping or NFC shows."""
    _, ref = pairs["sd15"]
    normalizer, pre_tokenizer = ref.backend_tokenizer.normalizer, ref.backend_tokenizer.pre_tokenizer
    planes = [*range(0, 0x40000, 256), *range(0xE0000, 0xE1000, 256),
              *range(0x40000, 0xE0000, 0x10000), 0xF0000, 0x10FF00]  # unassigned planes: one chunk each
    bad = []
    for start in planes:
        cps = [cp for cp in range(start, start + 256) if not 0xD800 <= cp < 0xE000]
        if not cps:
            continue
        text = "q" + "".join(chr(cp) * 2 + "q" for cp in cps)
        want_norm, got_norm = normalizer.normalize_str(text), tk.normalize(text)
        want = [p for p, _ in pre_tokenizer.pre_tokenize_str(want_norm)]
        got = [p.encode("utf-8").decode("latin-1").translate(tk._BYTE_TABLE) for p in tk.pre_tokenize(got_norm)]
        if want_norm != got_norm or want != got:
            bad += [cp for cp in cps if _differs(normalizer, pre_tokenizer, chr(cp))]
    if bad:
        cats = {unicodedata.category(chr(cp)) for cp in bad}
        hint = ("only code points this Python's unicodedata does not know: tokenizers' Unicode tables "
                "moved; put these in tokenizer._NEW_*:\n" + _new_unicode_tables(normalizer, pre_tokenizer)
                if cats == {"Cn"} else "")
        pytest.fail(f"{len(bad)} code points differ, e.g. {[hex(cp) for cp in bad[:12]]} {hint}")


def _differs(normalizer, pre_tokenizer, c: str) -> bool:
    text = "q" + c + c + "q"
    norm = normalizer.normalize_str(text)
    want = [p for p, _ in pre_tokenizer.pre_tokenize_str(norm)]
    got = [p.encode("utf-8").decode("latin-1").translate(tk._BYTE_TABLE) for p in tk.pre_tokenize(tk.normalize(text))]
    return norm != tk.normalize(text) or want != got


def _new_unicode_tables(normalizer, pre_tokenizer) -> str:
    """Letters, numbers and lowercase mappings tokenizers has for code points Python calls Cn."""
    from tokenizers import Regex, pre_tokenizers

    split = pre_tokenizers.Split(Regex(r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), behavior="removed", invert=True)
    letters, numbers, lower = [], [], {}
    for cp in range(0x110000):
        c = chr(cp)
        if 0xD800 <= cp < 0xE000 or unicodedata.category(c) != "Cn":
            continue
        if len(split.pre_tokenize_str("a" + c + "a")) == 1:
            letters.append(cp)
        elif len(split.pre_tokenize_str("!" + c + "!")) == 3:
            numbers.append(cp)
        if normalizer.normalize_str(c) != c:
            lower[hex(cp)] = hex(ord(normalizer.normalize_str(c)))

    def ranges(cps):
        out = []
        for cp in cps:
            if out and out[-1][1] == cp - 1:
                out[-1][1] = cp
            else:
                out.append([cp, cp])
        return ", ".join(f"(0x{a:04X}, 0x{b:04X})" for a, b in out)

    return f"_NEW_LETTERS: {ranges(letters)}\n_NEW_NUMBERS: {ranges(numbers)}\nlowercase: {lower}"


# --- the tests can fail ------------------------------------------------------------------------


class _OnlyDecimalDigits(tk._StandIn):
    """Python's \\d instead of \\p{N}: '½', '²', 'Ⅻ' become punctuation."""

    def __missing__(self, cp):
        ch = super().__missing__(cp)
        if ch == "0" and unicodedata.category(chr(cp)) != "Nd":
            ch = self[cp] = "#"
        return ch


def _plain_lower(text):  # str.lower(): final-sigma rule, no per-char lowercasing
    return tk._WHITESPACE_RUN.sub(" ", unicodedata.normalize("NFC", text)).lower()


MUTANTS = {
    "no NFC": ("normalize", lambda t: tk._WHITESPACE_RUN.sub(" ", t).lower()),
    "str.lower": ("normalize", _plain_lower),
    "python \\s": ("_WHITESPACE_RUN", re.compile(r"\s+")),
    "\\d numbers": ("_STAND_IN", _OnlyDecimalDigits()),
}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_corpus_catches_a_broken_tokenizer(pairs, folders, monkeypatch, mutant):
    """A tokenizer with one plausible mistake disagrees with the reference on some corpus prompt."""
    attr, value = MUTANTS[mutant]
    monkeypatch.setattr(tk, attr, value)
    _, ref = pairs["sd15"]
    assert mismatches(CLIPTokenizer.from_folder(folders["sd15"]), ref, PROMPTS), f"not caught: {mutant}"


def test_corpus_catches_wrong_bpe_order_pad_and_added_tokens(pairs, folders):
    _, ref = pairs["sd21"]
    broken = CLIPTokenizer.from_folder(folders["sd21"])
    broken.ranks = {pair: -rank for pair, rank in broken.ranks.items()}  # latest merge first
    assert mismatches(broken, ref, PROMPTS)
    broken = CLIPTokenizer.from_folder(folders["sd21"])
    broken.pad_token_id = broken.eos_token_id  # SD 1.x padding for an SD 2.x model
    assert mismatches(broken, ref, PROMPTS)
    broken = CLIPTokenizer.from_folder(folders["sd21"])
    broken._raw_added = [t for t in broken._raw_added if t.content != "!"]  # '!' left to BPE
    assert mismatches(broken, ref, PROMPTS)
