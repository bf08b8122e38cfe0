"""A1111 prompt syntax and chunking (sdweb.prompt_syntax) and the emphasis math (sdweb.emphasis).

References: the examples in A1111's own `parse_prompt_attention` docstring (modules/prompt_parser.py),
whose weights are the exact floats A1111 prints; token ids from transformers' CLIPTokenizer on the
tiny models' real CLIP tables, with the expected chunk layout worked out from A1111's rules
(sd_hijack_clip.py `tokenize_line`) by hand for each case; A1111's "Original" emphasis formula
evaluated in torch.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdweb.emphasis import apply_emphasis, match_chunk_counts
from sdweb.errors import ConfigError
from sdweb.prompt_syntax import LoraTag, PromptChunker, extract_lora_tags, parse_prompt_attention
from sdweb.tokenizer import CLIPTokenizer

transformers = pytest.importorskip("transformers")


# --- parse_prompt_attention --------------------------------------------------------------------------

# Every example of A1111's parse_prompt_attention docstring, with its printed result.
A1111_EXAMPLES = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
      [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
]


@pytest.mark.parametrize("text, expected", A1111_EXAMPLES)
def test_a1111_documented_examples(text, expected):
    assert parse_prompt_attention(text) == expected  # float ==: bit-for-bit A1111's weights


@pytest.mark.parametrize("text, expected", [
    ("", [["", 1.0]]),
    ("[a]", [["a", 1 / 1.1]]),
    ("[[a]]", [["a", (1 / 1.1) * (1 / 1.1)]]),
    ("[unbalanced", [["unbalanced", 1 / 1.1]]),
    ("([a", [["a", 1.1 * (1 / 1.1)]]),  # open brackets close at the end: round ones first, then square
    ("(a:-0.5) b", [["a", -0.5], [" b", 1.0]]),
    ("(a:.5)", [["a", 0.5]]),
    ("(a: 1.2)", [["a: 1.2", 1.1]]),  # a space after ':' is no weight: ':' and ' 1.2' are text
    ("a:1.2) b", [["a:1.2) b", 1.0]]),  # ':w)' with no bracket open is text
    ("a) b] c", [["a) b] c", 1.0]]),
    ("\\\\ \\d", [["\\ d", 1.0]]),  # '\\' is a backslash; a backslash before anything else is dropped
    ("a BREAK b", [["a", 1.0], ["BREAK", -1.0], ["b", 1.0]]),
    ("BREAK", [["", 1.0], ["BREAK", -1.0], ["", 1.0]]),
    ("aBREAK BREAKs b", [["aBREAK BREAKs b", 1.0]]),  # only the word on its own
    ("a, BREAK\n(b)", [["a,", 1.0], ["BREAK", -1.0], ["", 1.0], ["b", 1.1]]),
    # a BREAK inside brackets gets their weight and so becomes the plain word, as in A1111
    ("(a BREAK b)", [["a", 1.1], ["BREAK", -1.1], ["b", 1.1]]),
])
def test_parse_rules(text, expected):
    assert parse_prompt_attention(text) == expected


def test_bad_explicit_weight_is_named():
    with pytest.raises(ConfigError, match=r"'1\.2\.3'"):
        parse_prompt_attention("(a:1.2.3)")


# --- <lora:...> tags ---------------------------------------------------------------------------------

def test_lora_tags_are_extracted_and_removed():
    text, tags = extract_lora_tags("a cat <lora:pixel-art:0.7>, <lora:detail> on a <lyco:x:0.5:0.25> mat")
    assert text == "a cat ,  on a  mat"
    assert tags == [LoraTag("pixel-art", 0.7, 0.7), LoraTag("detail", 1.0, 1.0), LoraTag("x", 0.5, 0.25)]
    assert extract_lora_tags("<lora:a:te=0.3:unet=0.9>")[1] == [LoraTag("a", 0.3, 0.9)]
    assert extract_lora_tags("<lora:a:0.5:unet=2>")[1] == [LoraTag("a", 0.5, 2.0)]
    assert extract_lora_tags("no tags <here>") == ("no tags <here>", [])


@pytest.mark.parametrize("prompt, match", [
    ("<hypernet:x:1>", "hypernet"),
    ("<lora:x:abc>", "'abc'"),
    ("<lora:x:nan>", "'nan'"),
    ("<lora:x:1:1:8>", "dyn"),
    ("<lora:x:foo=1>", "foo="),
    ("<lora: :1>", "names no LoRA"),
])
def test_bad_lora_tags(prompt, match):
    with pytest.raises(ConfigError, match=match):
        extract_lora_tags(prompt)


# --- chunking ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["sd1_tiny", "sd2_tiny"])
def tokenizers(request):
    folder = request.getfixturevalue(request.param) / "tokenizer"
    return CLIPTokenizer.from_folder(folder), transformers.CLIPTokenizer.from_pretrained(folder)


def hf_ids(ref, text):
    """Token ids of text without bos/eos, from transformers."""
    return ref(text, add_special_tokens=False)["input_ids"]


def expected_chunk(ref, tokens, weights=None):
    """[bos, tokens, eos, pad...] and weights [1, weights, 1...], from transformers' special ids."""
    weights = weights or [1.0] * len(tokens)
    pad = 75 - len(tokens)
    return ([ref.bos_token_id, *tokens, ref.eos_token_id] + [ref.pad_token_id] * pad,
            [1.0, *weights, 1.0] + [1.0] * pad)


@pytest.mark.parametrize("prompt", ["", "a photo of a cat", "A red car, on a beach!! at sunset (film grain)",
                                    "word " * 75])
def test_plain_short_prompt_is_the_ordinary_encoding(tokenizers, prompt):
    ours, ref = tokenizers
    typed = prompt.replace("(", "\\(").replace(")", "\\)")  # literal brackets, escaped
    cp = PromptChunker(ours).chunk(typed)
    assert len(cp.chunks) == 1
    expected = ref(prompt, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert cp.chunks[0].ids == expected == ours.encode(prompt)
    assert cp.chunks[0].weights == [1.0] * 77
    assert cp.token_count == len(hf_ids(ref, prompt)) <= 75


def test_75_tokens_per_chunk(tokenizers):
    ours, ref = tokenizers
    cat = hf_ids(ref, "cat")
    assert len(cat) == 1
    cp = PromptChunker(ours).chunk("cat " * 80)
    assert [c.ids for c in cp.chunks] == [expected_chunk(ref, cat * 75)[0], expected_chunk(ref, cat * 5)[0]]
    assert (cp.token_count, cp.token_limit, [c.n_tokens for c in cp.chunks]) == (80, 150, [75, 5])


@pytest.mark.parametrize("n_before, backtracks", [(60, True), (55, True), (54, False), (50, False)])
def test_comma_backtrack(tokenizers, n_before, backtracks):
    """n_before words, a comma, then words: the comma sits at index n_before of the first chunk; when
    the chunk fills, 75 - n_before <= 20 moves the words after the comma to the next chunk."""
    ours, ref = tokenizers
    cat, comma, dog = hf_ids(ref, "cat")[0], hf_ids(ref, ",")[0], hf_ids(ref, "dog")[0]
    n_after = 85 - n_before
    cp = PromptChunker(ours).chunk("cat " * n_before + ", " + "dog " * n_after)
    first = [cat] * n_before + [comma]
    if backtracks:
        chunks = [first, [dog] * n_after]
    else:
        fill = 75 - len(first)
        chunks = [first + [dog] * fill, [dog] * (n_after - fill)]
    assert [c.ids for c in cp.chunks] == [expected_chunk(ref, toks)[0] for toks in chunks]
    assert cp.token_count == 75 + len(chunks[1])


def test_weights_and_break(tokenizers):
    ours, ref = tokenizers
    cat, dog, red = (hf_ids(ref, w)[0] for w in ("cat", "dog", "red"))
    cp = PromptChunker(ours).chunk("a (red:1.5) cat BREAK [dog]")
    a = hf_ids(ref, "a")[0]
    assert [(c.ids, c.weights) for c in cp.chunks] == [
        expected_chunk(ref, [a, red, cat], [1.0, 1.5, 1.0]),
        expected_chunk(ref, [dog], [1 / 1.1]),
    ]
    assert cp.token_count == 75 + 1
    # BREAK first gives an empty chunk; a BREAK at the end adds none
    assert [c.n_tokens for c in PromptChunker(ours).chunk("BREAK cat").chunks] == [0, 1]
    assert [c.n_tokens for c in PromptChunker(ours).chunk("cat BREAK").chunks] == [1]


def test_prompt_with_lora_tag_is_chunked_without_it(tokenizers):
    ours, ref = tokenizers
    cp = PromptChunker(ours).chunk("a cat <lora:style:0.8>")
    assert cp.loras == [LoraTag("style", 0.8, 0.8)]
    assert cp.chunks[0].ids == ref("a cat ", padding="max_length", max_length=77)["input_ids"]


def test_embedding_slots(tokenizers):
    ours, ref = tokenizers
    chunker = PromptChunker(ours)
    chunker.add_embedding("my-emb", 3)
    cp = chunker.chunk("a photo of (My-Emb:1.2) cat")
    a, photo, of, cat = (hf_ids(ref, w)[0] for w in ("a", "photo", "of", "cat"))
    ids, weights = expected_chunk(ref, [a, photo, of, 0, 0, 0, cat], [1.0, 1.0, 1.0, 1.2, 1.2, 1.2, 1.0])
    (chunk,) = cp.chunks
    assert (chunk.ids, chunk.weights) == (ids, weights)
    assert chunk.embeddings == [(4, "my-emb", 0), (5, "my-emb", 1), (6, "my-emb", 2)]
    assert chunk.n_tokens == 7


def test_embedding_never_straddles_chunks(tokenizers):
    ours, ref = tokenizers
    chunker = PromptChunker(ours)
    chunker.add_embedding("my-emb", 3)
    cat = hf_ids(ref, "cat")
    cp = chunker.chunk("cat " * 73 + "my-emb cat")
    assert [c.ids for c in cp.chunks] == [expected_chunk(ref, cat * 73)[0], expected_chunk(ref, [0, 0, 0] + cat)[0]]
    assert [c.embeddings for c in cp.chunks] == [[], [(1, "my-emb", 0), (2, "my-emb", 1), (3, "my-emb", 2)]]


def test_comma_backtrack_moves_embedding_vectors_too(tokenizers):
    ours, ref = tokenizers
    chunker = PromptChunker(ours)
    chunker.add_embedding("my-emb", 2)
    cat, comma, dog = hf_ids(ref, "cat")[0], hf_ids(ref, ",")[0], hf_ids(ref, "dog")[0]
    # the comma at index 60; the tail (10 dogs, the 2 embedding slots, 3 dogs) moves on
    cp = chunker.chunk("cat " * 60 + ", " + "dog " * 10 + "my-emb " + "dog " * 5)
    tail = [dog] * 10 + [0, 0] + [dog] * 5
    assert [c.ids for c in cp.chunks] == [expected_chunk(ref, [cat] * 60 + [comma])[0], expected_chunk(ref, tail)[0]]
    assert [c.embeddings for c in cp.chunks] == [[], [(11, "my-emb", 0), (12, "my-emb", 1)]]


def test_longest_trigger_wins_and_bad_embeddings(tokenizers):
    ours, ref = tokenizers
    chunker = PromptChunker(ours)
    chunker.add_embedding("style", 1)
    chunker.add_embedding("style two", 2)
    cp = chunker.chunk("style two style")
    assert cp.chunks[0].embeddings == [(1, "style two", 0), (2, "style two", 1), (3, "style", 0)]
    chunker.remove_embedding("style two")
    assert [t for _, t, _ in chunker.chunk("style two").chunks[0].embeddings] == ["style"]
    with pytest.raises(ConfigError, match="76 vectors"):
        chunker.add_embedding("big", 76)
    with pytest.raises(ConfigError, match="no tokens"):
        chunker.add_embedding("  ", 1)


# --- emphasis ----------------------------------------------------------------------------------------

def a1111_original_emphasis(z, w):
    """A1111's EmphasisOriginal.after_transformers, in torch."""
    import torch

    z, w = torch.from_numpy(z), torch.from_numpy(np.asarray(w, dtype=np.float32))
    original_mean = z.mean()
    z = z * w.reshape(w.shape + (1,)).expand(z.shape)
    return (z * (original_mean / z.mean())).numpy()


def test_emphasis_matches_a1111():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((77, 64), dtype=np.float32) + 0.3
    w = np.ones(77, np.float32)
    w[3:6], w[10] = 1.21, 1 / 1.1
    ours = apply_emphasis(z, w)
    np.testing.assert_allclose(ours, a1111_original_emphasis(z, w), rtol=2e-6, atol=1e-6)
    assert abs(ours.mean(dtype=np.float64) - z.mean(dtype=np.float64)) < 1e-6
    batched = apply_emphasis(np.stack([z, 2 * z]), w)  # each chunk of a batch keeps its own mean
    np.testing.assert_allclose(batched[1], a1111_original_emphasis(2 * z, w), rtol=2e-6, atol=1e-6)


def test_unit_weights_leave_hidden_states_untouched():
    z = np.random.default_rng(1).standard_normal((2, 77, 8), dtype=np.float32)
    assert apply_emphasis(z, [1.0] * 77) is z
    with pytest.raises(ConfigError, match="do not fit"):
        apply_emphasis(z, [1.0] * 76)


def test_match_chunk_counts():
    """The short side gets copies of its own empty-prompt chunk; the empty prompt is encoded only for
    a side that is short."""
    cond, uncond = ["c0", "c1", "c2"], ["u0"]
    asked = []

    def empty(side):
        asked.append(side)
        return f"empty-{side}"

    assert match_chunk_counts(cond, uncond, empty) == (cond, ["u0", "empty-uncond", "empty-uncond"])
    assert match_chunk_counts(uncond, cond, empty) == (["u0", "empty-cond", "empty-cond"], cond)
    assert match_chunk_counts(cond, cond, empty) == (cond, cond)
    assert asked == ["uncond", "cond"]
