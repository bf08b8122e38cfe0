"""Write tests/data/prompts.txt: the seeded prompt corpus the tokenizer tests compare against HF.

    python3 scripts/make_prompt_corpus.py [--out tests/data/prompts.txt]

Deterministic: a fixed seed and only `random.Random` calls whose results are stable across Python
versions, so rerunning rewrites the file byte for byte. Random code points come from blocks that
were settled long before Unicode 14, so the corpus is the same on any Python >= 3.11.

File format (also written as the file's header):
  one prompt per line, lines split on "\\n" only, UTF-8;
  "#%" starts a comment line, except "#%empty" (the empty prompt) and "#%json <JSON string>" (a
  prompt with a newline, control character, line separator or leading/trailing whitespace, which a
  plain line would not carry safely).
"""

from __future__ import annotations

import argparse
import json
import random
import unicodedata
from pathlib import Path

SEED = 20240611
HEADER = """\
#% CLIP tokenizer test corpus, made by scripts/make_prompt_corpus.py (seeded; rerun to regenerate).
#% One prompt per line; split lines on "\\n" only (not str.splitlines), UTF-8.
#% Lines starting with "#%" are comments, except:
#%   "#%empty"             the empty prompt
#%   "#%json <JSON str>"   a prompt written as a JSON string (newlines, control chars, edge whitespace)
"""

SUBJECTS = [
    "a photo of a cat", "portrait of an old fisherman", "a castle on a hill at sunset", "an astronaut riding a horse",
    "cyberpunk city street at night", "a bowl of ramen", "a red fox in the snow", "a cozy cabin in the woods",
    "a steampunk airship", "a lighthouse in a storm", "a samurai standing in the rain", "a corgi wearing sunglasses",
    "a futuristic sports car", "an ancient temple in the jungle", "a medieval knight", "a bouquet of roses",
    "a dragon flying over mountains", "a girl reading a book under a tree", "a robot playing chess",
    "a busy market in Marrakech", "a cup of coffee on a wooden table", "a whale breaching the ocean",
    "the Eiffel Tower made of chocolate", "a wizard casting a spell", "a frog on a lily pad",
    "a snowy mountain village",
    "a neon-lit ramen shop", "a portrait of a woman with freckles", "an owl on a branch", "a viking ship",
    "a desert oasis", "a treehouse city", "a koi pond", "an abandoned amusement park", "a hamburger, studio shot",
    "a polar bear on an iceberg", "a jellyfish in deep sea", "a vintage typewriter", "a cathedral interior",
    "a hot air balloon festival", "a tiny house on wheels", "Mount Fuji with cherry blossoms", "a pirate captain",
    "a bustling Tokyo crosswalk", "an elven archer", "a sunflower field", "a golden retriever puppy",
    "a space station orbiting Jupiter", "a fantasy map", "a still life with lemons", "a tiger in tall grass",
    "an isometric room", "a cottagecore kitchen", "a knight's helmet", "a Victorian mansion", "a bioluminescent forest",
    "a man in a trench coat", "a child flying a kite", "a sailboat on a calm lake", "a mechanical heart",
]
STYLES = [
    "oil painting", "watercolor", "digital art", "concept art", "studio ghibli style", "unreal engine 5",
    "octane render",
    "8k", "4K UHD", "highly detailed", "intricate details", "trending on artstation", "by greg rutkowski",
    "by alphonse mucha", "by Hayao Miyazaki", "cinematic lighting", "volumetric lighting", "bokeh", "35mm film",
    "f/1.8", "HDR", "sharp focus", "ultra realistic", "photorealistic", "low poly", "pixel art", "vaporwave",
    "art nouveau", "ukiyo-e", "impressionism", "film grain", "golden hour", "soft light", "dramatic shadows",
    "matte painting", "hyperrealism", "isometric", "flat design", "line art", "charcoal sketch", "DSLR", "Canon EOS R5",
    "award winning photo", "National Geographic", "wide angle", "macro shot", "depth of field", "symmetrical",
    "pastel colors", "vibrant colors", "monochrome", "black and white", "sepia", "anime", "manga", "chibi",
]
WEIGHTED = [
    "(masterpiece:1.2)", "((best quality))", "(((masterpiece)))", "[[blurry]]", "{detailed}", "[foo:bar:0.5]",
    "(red:0.8)", "<lora:add_detail:0.7>", "BREAK", "AND", "(high quality:1.4)", "[cat|dog]", "(night sky:1.3)",
    "((ultra-detailed))", "[from:to:10]", "(worst quality, low quality:1.4)", "\\(parenthesis\\)",
    "embedding:EasyNegative", "(1girl)", "score_9, score_8_up",
]
NEGATIVE = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry"
)
SEPARATORS = [", ", ",", " , ", " | ", "; ", ". ", " ", "  ", "\t", ",\t", " - ", " / ", ", , "]

ACCENTS = [
    "café", "naïve", "Ångström", "résumé", "façade", "jalapeño", "São Paulo", "Zürich", "Kraków", "smørrebrød",
    "Þingvellir", "crème brûlée", "piñata", "Ελληνικά", "Москва", "İstanbul", "straße", "STRASSE", "ΣΟΦΙΑ",
    "ΟΔΟΣ", "Ὀδυσσεύς", "Łódź", "Ærø", "Dvořák", "Håkon", "œuvre", "ﬁnal ﬂower", "ＡＢＣ　ｆｕｌｌｗｉｄｔｈ",
    "Ω Ω Å Å", "cafe\u0301 (NFD)", "Ha\u0308agen-Dazs", "\u1100\u1161\u11a8 (jamo)", "ǅemal ǈ ǋ", "Ǳ ǲ ǳ",
    "ȺȾ", "ẞ capital sharp s", "ΐ ΰ", "ﬀ ﬃ ﬄ", "Ĳssel", "Ŀlobregat", "ŉ", "ǰ", "ı dotless, i̇ dotted",
    "Ⓐ circled", "𝐁𝐨𝐥𝐝 𝑰𝒕𝒂𝒍𝒊𝒄", "ᴬᴮᶜ superscript", "Ꭰ Cherokee", "Ꙁ Old Cyrillic", "ᾼ ῌ ῼ",
]
SCRIPTS = [
    "漢字", "かな", "カタカナ", "한국어", "一只猫坐在窗台上", "富士山と桜", "서울의 밤 풍경", "ｶﾀｶﾅ半角", "「こんにちは」、世界。",
    "東京タワー、夜景、ネオン", "水墨画风格的山水", "벚꽃 아래의 소녀", "العربية", "قطة على السجادة", "עברית", "חתול שחור",
    "हिन्दी", "एक सुंदर मंदिर", "ภาษาไทย", "แมวน่ารัก", "বাংলা", "தமிழ்", "ქართული", "Հայերեն", "አማርኛ",
    "ᠮᠣᠩᠭᠣᠯ", "ไทย๑๒๓", "ꦗꦮ", "ᚠᚢᚦᚨᚱᚲ runes", "𓂀 hieroglyph", "ⵜⴰⵎⴰⵣⵉⵖⵜ", "ᓄᓇᕗᑦ", "ᏣᎳᎩ", "ພາສາລາວ",
    "မြန်မာ", "ខ្មែរ", "ᨅᨔ", "ߒߞߏ", "ܣܘܪܝܝܐ", "ދިވެހި", "𐌰𐍄𐍄𐌰", "ꯃꯩꯇꯩ",
]
EMOJI = [
    "😀", "🐱", "👍", "👍🏻", "👍🏽", "👍🏿", "👨‍👩‍👧‍👦", "👩‍❤️‍👨", "🏳️‍🌈", "🏴‍☠️", "🧑🏽‍🚀", "👩🏾‍🎨", "🇯🇵", "🇺🇸",
    "🇪🇺", "1️⃣", "#️⃣", "*️⃣", "❤️", "❤", "✨", "🔥🔥🔥", "🌸🌸", "🐉", "🍣", "🚀", "🎨", "🌈", "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
    "🫠", "🧑‍🤝‍🧑", "👁️‍🗨️", "☕", "♀️", "✌🏼", "🤌", "🦄", "🌊", "⭐",
]
NUMBERS = [
    "1024x768", "512x512", "768 x 768", "3.14", "3,14", "1,000,000", "1.000.000", "½", "¼ ¾", "²", "x²+y³",
    "Ⅻ", "ⅻ", "Ⅳ", "①②③", "⑴", "1st 2nd 3rd 4th", "50mm", "f/2.8", "1e-5", "-273.15°C", "100%", "$19.99", "€5",
    "£3", "¥500", "0x1F", "v1.5", "2.1-base", "2024-01-01", "12:30", "𝟙𝟚𝟛", "⁴⁵⁶", "₁₂₃", "⅓ ⅔ ⅛", "٠١٢٣٤٥٦٧٨٩",
    "۰۱۲۳", "०१२३", "๑๒๓", "１２３", "৩৪", "፩፪", "〇一二三", "百万", "𝟎", "⓪⑩⑳", "Ⅰ Ⅱ Ⅲ", "ↂ", "𐄇", "𒐫",
    "007", "99.9%", "16:9", "4:3", "+1", "-1", "2^10", "10⁻³", "6'2\"", "37.7749° N, 122.4194° W",
]
PUNCT = [
    "!!!", "...", "---", "???", "(((masterpiece)))", "[foo:bar:0.5]", "{{a|b}}", "***", "___", "~~~", ",,,", ";;",
    ":)", ":D", "<3", "->", "=>", "…", "— –", "«guillemets»", "„German“", "¿Qué?", "¡Hola!", "!?", "?!", "‽",
    "@@@", "###", "$$$", "%%%", "^^^", "&&&", "|||", "\\\\", "//", "::", "<<>>", "(())", "[[]]", "{{}}", "!!1!",
    "!", "!a!", "a!!b", "''", "\"\"", "``", "·", "•", "※", "§", "¶", "†‡", "©®™", "°", "±", "×÷", "∞", "≈≠≤≥",
    "→←↑↓", "■□▲△●○", "♠♣♥♦", "♪♫", "☀☁☂", "✓✗", "【】", "《》", "〈〉", "『』", "〜", "・", "！？", "（笑）",
]
APOSTROPHES = [
    "don't", "it's", "I'm", "you're", "we've", "they'll", "he'd", "DON'T", "IT'S", "I'M", "YOU'RE", "don’t",
    "it’s", "''", "'quoted'", "rock'n'roll", "o'clock", "‘single’", "“double”", "'s", "trailing'", "isn''t",
    "'s's", "cat's cat's", "the '90s", "'tis", "y'all'd've", "ma'am", "l'amour", "d'Artagnan", "can't won't",
    "' s", "'S", "'RE", "'Ve", "'LL", "'D", "'M", "'T", "ʼ modifier apostrophe", "´ acute", "′ prime",
]
CONTROL = [
    "\x00", "\x07", "\x1b[31mred\x1b[0m", "\x1c", "\x1d", "\x1e", "\x1f", "\x7f", "\x85", "\u200b", "\u200d",
    "\ufeff", "\u00ad", "\u202e", "\u2060", "\u2028", "\u2029", "\x0b", "\x0c", "\r", "\r\n", "\n", "\u180e",
    "\u200c", "\u034f", "\ufe0f", "\U000e0041", "\ue000", "\uf8ff", "\ufffd", "\uffff",
]
WHITESPACE = [" ", "\t", "\n", "\u3000", "\u00a0", "\u2003", "\u2009", "\u202f", "\u205f", "\u1680", "\u2028",
              "\x0b", "\x0c", "\r", "\x85", "  ", "\t\t", " \t "]
HTML = [
    "<b>bold</b>", "&amp;", "&lt;cat&gt;", "&#39;", "&nbsp;", '<img src="x.png" alt="cat">', "<br/>",
    "<!-- comment -->", "<div class='a'>x</div>", "&quot;quoted&quot;", "<script>alert(1)</script>", "<p>",
]
URLS = [
    "https://huggingface.co/runwayml/stable-diffusion-v1-5?x=1&y=2#frag", "www.example.com",
    "user@example.com", "file:///C:/path\\to\\file.png", "http://127.0.0.1:8080/api/v1", "ftp://a.b/c.txt",
    "https://例え.jp/パス", "s3://bucket/key.safetensors", "#hashtag @mention",
]
CODE = [
    'print("hello")', "def f(x): return x**2", '{"prompt": "cat", "steps": 20}', "SELECT * FROM t;", "a+b=c",
    "x<=y", "foo_bar_baz", "camelCaseName", "C++", "C#", "std::vector<int>", "$HOME/.cache", "\\d+\\s*",
    "\\frac{1}{2}", "if (a && b) { return; }", "arr[i][j] = 0", "lambda x: x", "#include <stdio.h>", "--seed 42",
    "@decorator", "0b1010", "1_000_000", "x != y", "a->b", "i++", "`backticks`", "~/path/to/file",
]
SPECIAL = [
    "<|startoftext|>", "<|endoftext|>", "a photo <|endoftext|> of", "<|ENDOFTEXT|>", "<|EndOfText|>",
    "<|endoftext|><|endoftext|>", "<|endoftext", "endoftext|>", "<||>", "<|startoftext|>cat", "cat<|endoftext|>",
    "<|startoftext|> <|endoftext|>", "<| endoftext |>", "<|startoftext|>!!!<|endoftext|>", "<|endoftexts|>",
    "<|endoftext|>\u0301", "«<|endoftext|>»", "x<|STARTOFTEXT|>y", "<|endoftext|>'s", "<|startoftext|>123",
]
# Blocks settled long before Unicode 14 (holes filtered with unicodedata give the same answer on any
# Python >= 3.11), for random mixtures.
BLOCKS = [
    (0x0021, 0x007E), (0x00A1, 0x00FF), (0x0100, 0x017F), (0x0180, 0x024F), (0x0370, 0x03FF), (0x0400, 0x04FF),
    (0x0530, 0x058F), (0x0590, 0x05FF), (0x0600, 0x06FF), (0x0900, 0x097F), (0x0E00, 0x0E7F), (0x10A0, 0x10FF),
    (0x1E00, 0x1EFF), (0x1F00, 0x1FFF), (0x2000, 0x206F), (0x2070, 0x209F), (0x20A0, 0x20B5), (0x2100, 0x214F),
    (0x2150, 0x218F), (0x2190, 0x21FF), (0x2200, 0x22FF), (0x2460, 0x24FF), (0x2500, 0x257F), (0x25A0, 0x25FF),
    (0x2600, 0x26FF), (0x3000, 0x303F), (0x3040, 0x309F), (0x30A0, 0x30FF), (0x4E00, 0x9FA5), (0xAC00, 0xD7A3),
    (0xFF00, 0xFFEF), (0x1D400, 0x1D7FF), (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x0300, 0x036F),
]


def json_line(prompt: str) -> str:
    return "#%json " + json.dumps(prompt, ensure_ascii=False)


def needs_json(prompt: str) -> bool:
    if prompt.startswith("#%") or prompt != prompt.strip() or prompt.startswith("\ufeff"):
        return True
    return any((unicodedata.category(c) == "Cc" and c != "\t") or c in "\u2028\u2029" for c in prompt)


class Corpus:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.prompts: list[str] = []

    def add(self, prompt: str):
        self.prompts.append(prompt)

    def pick(self, items, lo, hi):
        return [self.rng.choice(items) for _ in range(self.rng.randint(lo, hi))]

    def case(self, text: str) -> str:
        r = self.rng.randint(0, 5)
        if r == 0:
            return text.upper()
        if r == 1:
            return text.title()
        if r == 2:
            return "".join(c.upper() if self.rng.randint(0, 1) else c for c in text)
        return text

    def sd_prompt(self, lo=2, hi=10) -> str:
        parts = [self.rng.choice(SUBJECTS)] + self.pick(STYLES, lo, hi)
        if self.rng.randint(0, 2) == 0:
            parts += self.pick(WEIGHTED, 1, 3)
        self.rng.shuffle(parts)
        sep = self.rng.choice(SEPARATORS)
        return self.case(sep.join(parts))

    def mix(self, pools, lo, hi) -> str:
        words = []
        for _ in range(self.rng.randint(lo, hi)):
            pool = self.rng.choice(pools)
            words.append(self.rng.choice(pool))
        glue = self.rng.choice(["", " ", " ", ", ", "\t", "  "])
        return glue.join(words)

    def random_chars(self, n) -> str:
        out = []
        while len(out) < n:
            a, b = self.rng.choice(BLOCKS)
            c = chr(self.rng.randint(a, b))
            if unicodedata.category(c) not in ("Cn", "Cs"):
                out.append(c)
        return "".join(out)


def build() -> list[str]:
    c = Corpus(SEED)
    # Edge prompts: empty, whitespace only, each listed item alone.
    c.add("")
    for w in WHITESPACE:
        c.add(w)
        c.add(w * 3)
    for pool in (ACCENTS, SCRIPTS, EMOJI, NUMBERS, PUNCT, APOSTROPHES, CONTROL, HTML, URLS, CODE, SPECIAL, WEIGHTED):
        for item in pool:
            c.add(item)
    for item in CONTROL:
        c.add(f"a{item}b")
        c.add(f"cat {item} dog")
    for item in APOSTROPHES + SPECIAL:
        c.add(f"a photo of {item} in the rain")
    c.add(NEGATIVE)
    # Realistic prompts: subject + styles + weights, in assorted separators and casings.
    for _ in range(900):
        c.add(c.sd_prompt())
    # Realistic prompts with a foreign word, number, emoji or piece of punctuation dropped in.
    extras = [ACCENTS, SCRIPTS, EMOJI, NUMBERS, PUNCT, APOSTROPHES, HTML, URLS, CODE, SPECIAL]
    for _ in range(500):
        base = c.sd_prompt(1, 5).split(" ")
        for _ in range(c.rng.randint(1, 3)):
            base.insert(c.rng.randint(0, len(base)), c.rng.choice(c.rng.choice(extras)))
        c.add(" ".join(base))
    # Mixed-script and odd-character salads.
    for _ in range(250):
        c.add(c.mix(extras + [SUBJECTS, STYLES, WEIGHTED, CONTROL, WHITESPACE], 2, 8))
    # Random code points from long-assigned blocks (letters, marks, numbers, symbols, CJK, emoji).
    for _ in range(200):
        c.add(c.random_chars(c.rng.randint(1, 24)))
    for _ in range(50):
        c.add(" ".join(c.random_chars(c.rng.randint(1, 6)) for _ in range(c.rng.randint(2, 10))))
    # Long prompts, well past 75 tokens: truncation.
    for _ in range(120):
        c.add(", ".join([c.sd_prompt(4, 12) for _ in range(c.rng.randint(2, 6))] + [NEGATIVE] * c.rng.randint(0, 1)))
    for n in (74, 75, 76, 77, 78):  # around the edge: "a" is one token, "a a ..." n tokens
        c.add(" ".join(["a"] * n))
        c.add(" ".join(["cat"] * (n - 1) + ["!!!"]))
    c.add("masterpiece " * 400)
    c.add("".join(c.random_chars(1) for _ in range(300)))
    c.add("x" * 1000)
    c.add("ab" * 300)
    c.add("🐱" * 100)
    c.add("漢" * 200)
    return c.prompts


def render(prompts: list[str]) -> str:
    lines = [HEADER.rstrip("\n")]
    for p in prompts:
        lines.append("#%empty" if p == "" else json_line(p) if needs_json(p) else p)
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "data" / "prompts.txt"))
    args = ap.parse_args()
    prompts = build()
    data = render(prompts).encode("utf-8")
    Path(args.out).write_bytes(data)
    print(f"wrote {args.out}: {len(prompts)} prompts, {len(data)} bytes")


if __name__ == "__main__":
    main()
