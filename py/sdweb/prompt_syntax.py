"""A1111's prompt syntax: attention weights, BREAK, `<lora:...>` tags, and packing into 77-token chunks.

    prompt ──extract_lora_tags──► text without tags, [LoraTag]
           ──parse_prompt_attention──► [[fragment, weight], ...]      (["BREAK", -1] ends a chunk)
           ──PromptChunker.chunk──► ChunkedPrompt: [Chunk(ids (77,), weights (77,), embeddings)], loras

The rules are those of AUTOMATIC1111's stable-diffusion-webui (modules/prompt_parser.py
`parse_prompt_attention`, modules/sd_hijack_clip.py `tokenize_line`, modules/extra_networks.py),
reimplemented here from their documented behaviour:

- `(text)` multiplies the weight of `text` by 1.1, `[text]` by 1/1.1, `(text:w)` by w; nesting
  multiplies. `\\(` `\\)` `\\[` `\\]` `\\\\` are the literal characters; any other backslash is dropped.
  A bracket left open applies to the end of the prompt; a closing bracket with nothing open, and
  `:` not followed by `number)`, are plain text. Neighbouring fragments of equal weight merge.
- `BREAK` (upper case, a word on its own) ends the current chunk; the whitespace around it goes.
- Each fragment is tokenized on its own (no bos/eos) and tokens are packed into chunks of 75. When a
  chunk is full and its last comma is at most 20 tokens from the end, the tokens after that comma
  move to the next chunk. A textual-inversion trigger word takes as many slots as its embedding has
  vectors and never straddles two chunks. Each chunk becomes [bos, 75 slots, eos] with the tail
  after the prompt's eos set to the model's pad id (`<|endoftext|>` for SD 1.x, `!` for SD 2.x),
  weight 1.0 on bos, eos and padding. An empty prompt is one chunk.

A prompt without weights, BREAK or embeddings of at most 75 tokens gives exactly the ids of
`CLIPTokenizer.encode(prompt)`, weights all 1.0: one chunk, today's encoding.

What the caller does with a ChunkedPrompt (one chunk at a time, in order):
 1. token embeddings = token_embedding[chunk.ids]; for each (position, trigger, i) in
    chunk.embeddings put vector i of that trigger's embedding at `position` instead (the slot's id
    is 0, a placeholder); add the position embeddings and run the text encoder (with clip skip).
 2. z (77, D) = emphasis.apply_emphasis(z, chunk.weights).
 3. concatenate the chunks' z along the sequence axis: (77 * len(chunks), D); match the prompt's and
    the negative prompt's chunk counts with emphasis.match_chunk_counts.

Where this deliberately differs from A1111: when the comma backtrack moves tokens to the next
chunk, an embedding among them moves with its vectors (A1111 moves its placeholder ids but leaves
the vectors at the old positions, in the first chunk's padding).
"""

from __future__ import annotations

import dataclasses
import math
import re

from .errors import ConfigError

__all__ = ["parse_prompt_attention", "extract_lora_tags", "LoraTag", "PromptChunker", "Chunk",
           "ChunkedPrompt", "CHUNK_TOKENS", "COMMA_BACKTRACK"]

CHUNK_TOKENS = 75  # prompt tokens per chunk: the text encoder's 77 positions less bos and eos
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack default

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1  # multiplied (not divided), so weights match A1111's to the last bit

BREAK = ("BREAK", -1.0)  # the marker parse_prompt_attention leaves where a chunk must end

# --- attention syntax ------------------------------------------------------------------------------

_SPECIAL = "\\()[]:"
_EXPLICIT_WEIGHT = re.compile(r":([+-]?[.\d]+)\)")  # "(text:1.3)": the weight and its closing bracket
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)
_ESCAPED = "()[]\\"


def parse_prompt_attention(text: str) -> list[list]:
    """Prompt -> [[fragment, weight], ...] as A1111's parse_prompt_attention gives it, BREAK as
    ["BREAK", -1.0]. Weights are Python floats computed in A1111's order, so they are equal to its
    values bit for bit (`'a (((house:1.3)) [on]'` gives house 1.5730000000000004).

    Raises ConfigError for an explicit weight that is not a number (`(a:1.2.3)`), where A1111 fails
    with a traceback.
    """
    res: list[list] = []
    round_open: list[int] = []  # index into res where each open bracket's range starts
    square_open: list[int] = []

    def multiply_from(start: int, factor: float):
        for entry in res[start:]:
            entry[1] *= factor

    def plain(piece: str):
        for i, part in enumerate(_BREAK_SPLIT.split(piece)):
            if i:
                res.append(list(BREAK))
            res.append([part, 1.0])

    pos, n = 0, len(text)
    while pos < n:
        c = text[pos]
        if c == "\\":
            nxt = text[pos + 1] if pos + 1 < n else ""
            if nxt and nxt in _ESCAPED:
                res.append([nxt, 1.0])
                pos += 2
            else:
                res.append(["", 1.0])  # a lone backslash is dropped
                pos += 1
        elif c == "(":
            round_open.append(len(res))
            pos += 1
        elif c == "[":
            square_open.append(len(res))
            pos += 1
        elif c == ":":
            m = _EXPLICIT_WEIGHT.match(text, pos)
            if m and round_open:
                try:
                    weight = float(m.group(1))
                except ValueError:
                    raise ConfigError(f"prompt weight {m.group(1)!r} in {m.group(0)!r} is not a number "
                                      "(expected (text:1.2))") from None
                multiply_from(round_open.pop(), weight)
                pos = m.end()
            elif m:
                plain(m.group(0))
                pos = m.end()
            else:
                plain(":")
                pos += 1
        elif c == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
            pos += 1
        elif c == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
            pos += 1
        elif c in ")]":
            plain(c)
            pos += 1
        else:
            end = pos + 1
            while end < n and text[end] not in _SPECIAL:
                end += 1
            plain(text[pos:end])
            pos = end

    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)

    if not res:
        res = [["", 1.0]]
    merged = [res[0]]
    for entry in res[1:]:
        if entry[1] == merged[-1][1]:
            merged[-1][0] += entry[0]
        else:
            merged.append(entry)
    return merged


# --- <lora:NAME:SCALE> tags ------------------------------------------------------------------------

_TAG = re.compile(r"<(\w+):([^>]+)>")
_LORA_KINDS = ("lora", "lyco")  # A1111 reads <lyco:...> (the old LyCORIS extension's tag) as LoRA


@dataclasses.dataclass(frozen=True)
class LoraTag:
    """`<lora:NAME:TE[:UNET]>` or `<lora:NAME:te=TE:unet=UNET>`: scale the LoRA NAME by TE in the text
    encoder and by UNET (default TE) in the UNet; `<lora:NAME>` is scale 1."""

    name: str
    text_encoder_scale: float = 1.0
    unet_scale: float = 1.0


def _scale(value: str, tag: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    if not math.isfinite(x):
        raise ConfigError(f"prompt tag {tag}: scale {value!r} is not a number (expected e.g. <lora:name:0.7>)")
    return x


def extract_lora_tags(text: str) -> tuple[str, list[LoraTag]]:
    """Prompt -> (prompt with every `<kind:args>` tag removed, the LoRA tags in prompt order).

    As A1111: the tag is `<(\\w+):([^>]+)>`, its args split on ':'; an arg `key=value` is named, the
    others positional: NAME, then the text-encoder scale, then the UNet scale. A tag of another kind
    (`<hypernet:...>`), a `dyn` rank limit, or a scale that is not a number raises ConfigError
    rather than being dropped in silence.
    """
    tags: list[LoraTag] = []

    def found(m: re.Match) -> str:
        kind, tag = m.group(1), m.group(0)
        if kind not in _LORA_KINDS:
            raise ConfigError(f"prompt tag {tag}: <{kind}:...> networks are not supported "
                              "(only <lora:NAME[:SCALE]>)")
        positional, named = [], {}
        for item in m.group(2).split(":"):
            parts = item.split("=", 2)
            if len(parts) == 2:
                named[parts[0]] = parts[1]
            else:
                positional.append(item)
        unknown = sorted(set(named) - {"te", "unet"})
        if unknown or len(positional) > 3:
            what = f"{unknown[0]}=" if unknown else "a fourth (dyn) argument"
            raise ConfigError(f"prompt tag {tag}: {what} is not supported "
                              "(expected <lora:NAME[:TE_SCALE[:UNET_SCALE]]> or te=/unet=)")
        if not positional or not positional[0].strip():
            raise ConfigError(f"prompt tag {tag} names no LoRA (expected <lora:NAME[:SCALE]>)")
        te = _scale(positional[1], tag) if len(positional) > 1 else 1.0
        te = _scale(named["te"], tag) if "te" in named else te
        unet = _scale(positional[2], tag) if len(positional) > 2 else te
        unet = _scale(named["unet"], tag) if "unet" in named else unet
        tags.append(LoraTag(positional[0], te, unet))
        return ""

    return _TAG.sub(found, text), tags


# --- chunking --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Chunk:
    """One text-encoder input: `ids` and `weights` have 77 entries (bos, 75 prompt slots, eos ... pad).

    embeddings: [(position in ids, trigger word, vector index)] for every textual-inversion slot;
    the id there is 0, a placeholder for the vector. n_tokens: prompt slots used (<= 75).
    """

    ids: list[int]
    weights: list[float]
    embeddings: list[tuple[int, str, int]]
    n_tokens: int


@dataclasses.dataclass
class ChunkedPrompt:
    """chunks: at least one. token_count: A1111's count for display ("54/75"): 75 for every chunk
    but the last, plus the last chunk's tokens. loras: the prompt's `<lora:...>` tags."""

    chunks: list[Chunk]
    token_count: int
    loras: list[LoraTag]

    @property
    def token_limit(self) -> int:
        """The count the current chunks hold (A1111's "token_count/limit"): 75 per chunk."""
        return CHUNK_TOKENS * math.ceil(max(self.token_count, 1) / CHUNK_TOKENS)


class PromptChunker:
    """`PromptChunker(tokenizer)` turns prompts into ChunkedPrompts with A1111's rules.

    tokenizer: a CLIPTokenizer (its ids, bos/eos/pad ids and vocabulary's `,</w>` are used).
    `add_embedding(trigger, n_vectors)` registers a textual-inversion trigger word: wherever its
    tokens appear in a prompt fragment they become n_vectors slots (longest trigger first).
    """

    def __init__(self, tokenizer, comma_backtrack: int = COMMA_BACKTRACK):
        self.tokenizer = tokenizer
        self.comma_backtrack = comma_backtrack
        self.comma_id = tokenizer.encoder.get(",</w>")
        # first token id -> [(trigger ids, trigger, n_vectors)], longest first
        self._triggers: dict[int, list[tuple[tuple[int, ...], str, int]]] = {}

    def _ids(self, text: str) -> list[int]:
        """Token ids of a fragment without bos/eos and without truncation (what A1111 gets from
        `tokenizer(text, truncation=False, add_special_tokens=False)`)."""
        return self.tokenizer.token_ids(text)

    def add_embedding(self, trigger: str, n_vectors: int):
        """Reserve n_vectors slots (1..75) wherever `trigger` appears; registering a trigger again
        replaces it. The trigger is matched by its token ids, so case does not matter."""
        if not 1 <= n_vectors <= CHUNK_TOKENS:
            raise ConfigError(f"embedding {trigger!r} has {n_vectors} vectors: a prompt chunk holds "
                              f"1 to {CHUNK_TOKENS}")
        ids = tuple(self._ids(trigger))
        if not ids:
            raise ConfigError(f"embedding trigger word {trigger!r} has no tokens: it could never match")
        self.remove_embedding(trigger)
        entries = self._triggers.setdefault(ids[0], [])
        entries.append((ids, trigger, n_vectors))
        entries.sort(key=lambda e: len(e[0]), reverse=True)  # stable: equal lengths keep their order

    def remove_embedding(self, trigger: str):
        for first, entries in list(self._triggers.items()):
            entries[:] = [e for e in entries if e[1] != trigger]
            if not entries:
                del self._triggers[first]

    def _match(self, ids: list[int], pos: int):
        for trig_ids, trigger, n in self._triggers.get(ids[pos], ()):
            if tuple(ids[pos:pos + len(trig_ids)]) == trig_ids:
                return trigger, n, len(trig_ids)
        return None

    def chunk(self, prompt: str) -> ChunkedPrompt:
        """Prompt -> ChunkedPrompt: `<lora:...>` tags taken out, weights parsed, chunks packed."""
        text, loras = extract_lora_tags(prompt)
        chunks, token_count = self.chunk_fragments(parse_prompt_attention(text))
        return ChunkedPrompt(chunks, token_count, loras)

    def chunk_fragments(self, fragments) -> tuple[list[Chunk], int]:
        """[[text, weight], ...] (parse_prompt_attention's output) -> (chunks, A1111's token count)."""
        tok = self.tokenizer
        chunks: list[Chunk] = []
        ids: list[int] = []
        weights: list[float] = []
        slots: list[tuple[int, str, int]] = []  # (index into ids, trigger, vector index)
        last_comma = -1
        token_count = 0

        def close(is_last: bool = False):
            nonlocal ids, weights, slots, last_comma, token_count
            n = len(ids)
            token_count += n if is_last else CHUNK_TOKENS
            pad = CHUNK_TOKENS - n
            chunks.append(Chunk(
                ids=[tok.bos_token_id, *ids, tok.eos_token_id] + [tok.pad_token_id] * pad,
                weights=[1.0, *weights, 1.0] + [1.0] * pad,
                embeddings=[(p + 1, trigger, i) for p, trigger, i in slots],
                n_tokens=n))
            ids, weights, slots, last_comma = [], [], [], -1

        for text, weight in fragments:
            if text == BREAK[0] and weight == BREAK[1]:
                close()
                continue
            frag = self._ids(text)
            pos = 0
            while pos < len(frag):
                token = frag[pos]
                if token == self.comma_id:
                    last_comma = len(ids)
                elif (self.comma_backtrack and len(ids) == CHUNK_TOKENS and last_comma != -1
                      and len(ids) - last_comma <= self.comma_backtrack):
                    cut = last_comma + 1
                    tail_ids, tail_weights = ids[cut:], weights[cut:]
                    tail_slots = [(p - cut, t, i) for p, t, i in slots if p >= cut]
                    ids, weights = ids[:cut], weights[:cut]
                    slots = [s for s in slots if s[0] < cut]
                    close()
                    ids, weights, slots = tail_ids, tail_weights, tail_slots
                if len(ids) == CHUNK_TOKENS:
                    close()

                hit = self._match(frag, pos) if self._triggers else None
                if hit is None:
                    ids.append(token)
                    weights.append(weight)
                    pos += 1
                    continue
                trigger, n_vectors, n_ids = hit
                if len(ids) + n_vectors > CHUNK_TOKENS:
                    close()
                slots += [(len(ids) + i, trigger, i) for i in range(n_vectors)]
                ids += [0] * n_vectors
                weights += [weight] * n_vectors
                pos += n_ids

        if ids or not chunks:
            close(is_last=True)
        return chunks, token_count
