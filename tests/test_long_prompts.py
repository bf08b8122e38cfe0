"""Weighted, long and BREAK-split prompts through the whole pipeline, against diffusers.

The reference is built here, independently of sdweb.prompt_syntax: A1111's rules (the issue's
statement of them) implemented over a regex scanner, transformers' CLIPTokenizer for each fragment,
transformers' CLIPTextModel for each chunk, the "Original" emphasis in torch. The resulting
prompt_embeds and negative_prompt_embeds go into diffusers' StableDiffusionPipeline with the noise
contract's latents; our image must match it at PSNR >= 40 dB, for an SD 1.x and an SD 2.x model
(`!` padding, clip skip), with the prompt and the negative prompt at different chunk counts either
way round, and on the WebGPU backend (cross-attention over 77 k context tokens). The text encoder's
states per chunk, textual-inversion slots included, are checked against transformers too.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from sdweb.backends import numpy as nb
from sdweb.clip import CLIPTextModel
from sdweb.model import ModelFolder
from sdweb.pipeline import Pipeline
from sdweb.prompt_syntax import PromptChunker
from sdweb.tokenizer import CLIPTokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

# ~110 tokens: nested and explicit weights, a square bracket, an escaped bracket, a comma close enough
# to the 75th token for the comma backtrack, and a BREAK.
LONG = ("a (watercolor:1.3) painting of a ((lighthouse)) on a [rocky] cliff at dusk, gulls circling overhead, "
        "soft warm light, \\(film grain\\), dramatic clouds, crashing waves, tall grass bending in the wind, "
        "a small red boat far out at sea, (distant mountains:0.8), mist over the water, stars appearing, "
        "a narrow path winding up, old stone walls, a lantern glowing in the window, seabirds, kelp, "
        "wet rocks shining, long shadows BREAK (highly detailed:1.2), masterpiece")
NEGATIVE = "blurry, [low quality]"
LONG_NEGATIVE = ", ".join(["blurry", "low quality", "jpeg artifacts", "watermark", "text", "cropped"] * 8)

RE_ATTENTION = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|]|[^\\()\[\]:]+|:")
RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse(text: str) -> list:
    """[[fragment, weight]] by A1111's rules: (x) x1.1, [x] /1.1, (x:w), nesting multiplies, escapes,
    open brackets run to the end, equal weights merge, BREAK as ["BREAK", -1]."""
    res, round_open, square_open = [], [], []

    def multiply(start, factor):
        for entry in res[start:]:
            entry[1] *= factor

    for m in RE_ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            multiply(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), 1.1)
        elif token == "]" and square_open:
            multiply(square_open.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(RE_BREAK.split(token)):
                if i:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for start in round_open:
        multiply(start, 1.1)
    for start in square_open:
        multiply(start, 1 / 1.1)
    merged = []
    for entry in res or [["", 1.0]]:
        if merged and merged[-1][1] == entry[1]:
            merged[-1][0] += entry[0]
        else:
            merged.append(entry)
    return merged


def chunk(tok, text: str) -> list[tuple[list[int], list[float]]]:
    """[(77 ids, 77 weights)]: 75 tokens a chunk, comma backtrack of 20, BREAK, [bos, ..., eos, pad...]."""
    comma = tok.convert_tokens_to_ids(",</w>")
    out, ids, weights, last_comma = [], [], [], -1

    def close():
        nonlocal ids, weights, last_comma
        pad = 75 - len(ids)
        out.append(([tok.bos_token_id, *ids, tok.eos_token_id] + [tok.pad_token_id] * pad,
                    [1.0, *weights, 1.0] + [1.0] * pad))
        ids, weights, last_comma = [], [], -1

    for fragment, weight in parse(text):
        if (fragment, weight) == ("BREAK", -1):
            close()
            continue
        for t in tok(fragment, add_special_tokens=False).input_ids:
            if t == comma:
                last_comma = len(ids)
            elif len(ids) == 75 and last_comma != -1 and 75 - last_comma <= 20:
                cut = last_comma + 1
                tail = ids[cut:], weights[cut:]
                ids, weights = ids[:cut], weights[:cut]
                close()
                ids, weights = list(tail[0]), list(tail[1])
            if len(ids) == 75:
                close()
            ids.append(t)
            weights.append(weight)
    if ids or not out:
        close()
    return out


def encode(te, ids, weights, clip_skip):
    """One chunk through transformers' CLIPTextModel (clip skip as diffusers takes it), then A1111's
    Original emphasis: z * w, rescaled to the unweighted mean."""
    with torch.no_grad():
        out = te(torch.tensor([ids]), output_hidden_states=True)
        z = out.last_hidden_state if clip_skip == 0 else \
            getattr(te, "text_model", te).final_layer_norm(out.hidden_states[-(clip_skip + 1)])
        mean = z.mean()
        z = z * torch.tensor(weights)[None, :, None]
        return z * (mean / z.mean())


def reference_embeds(pipe, prompt, negative, clip_skip=0):
    """(prompt_embeds, negative_prompt_embeds) by the rules above; the side with fewer chunks gets the
    empty prompt's chunk (encoded as that side is: diffusers' clip skip is the prompt's only)."""
    te, tok = pipe.text_encoder, pipe.tokenizer
    cond = [encode(te, i, w, clip_skip) for i, w in chunk(tok, prompt)]
    uncond = [encode(te, i, w, 0) for i, w in chunk(tok, negative)]
    (empty_ids, empty_w), = chunk(tok, "")
    n = max(len(cond), len(uncond))
    cond += [encode(te, empty_ids, empty_w, clip_skip)] * (n - len(cond))
    uncond += [encode(te, empty_ids, empty_w, 0)] * (n - len(uncond))
    return torch.cat(cond, dim=1), torch.cat(uncond, dim=1)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def diffusers_image(pipe, cond, uncond, *, seed, steps, guidance, size):
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    f = pipe.vae_scale_factor
    latents = torch.from_numpy(np.random.default_rng(seed).standard_normal((1, 4, size // f, size // f),
                                                                           dtype=np.float32))
    with torch.no_grad():
        out = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=steps,
                   guidance_scale=guidance, height=size, width=size, latents=latents, output_type="np")
    return (out.images[0] * 255).round().astype(np.uint8)


CASES = {
    # a 3-chunk prompt (comma backtrack, BREAK) against a 1-chunk negative: the negative is padded
    "sd1-long-prompt": ("sd1_tiny", LONG, NEGATIVE, 0, 3),
    # a 1-chunk weighted prompt against a 2-chunk negative, with clip skip: the prompt is padded
    "sd2-long-negative": ("sd2_tiny", "a (red:1.4) fox in [deep] snow", LONG_NEGATIVE, 1, 2),
}


@pytest.fixture(scope="module")
def references(request, diffusers_pipe):
    """name -> (model folder, settings, reference prompt embeds (2, 77 k, D): [uncond; cond], reference
    image), computed once per case."""
    cache = {}

    def get(name):
        if name not in cache:
            fixture, prompt, negative, clip_skip, chunks = CASES[name]
            folder = request.getfixturevalue(fixture)
            pipe = diffusers_pipe(folder)
            cond, uncond = reference_embeds(pipe, prompt, negative, clip_skip)
            assert cond.shape == uncond.shape and cond.shape[1] == 77 * chunks
            settings = dict(prompt=prompt, negative_prompt=negative, clip_skip=clip_skip, seed=5, steps=3,
                            guidance=7.5, scheduler="euler", width=64, height=64)
            image = diffusers_image(pipe, cond, uncond, seed=5, steps=3, guidance=7.5, size=64)
            cache[name] = folder, settings, torch.cat([uncond, cond]).numpy(), image
        return cache[name]

    return get


@pytest.mark.parametrize("name", CASES)
def test_prompt_embeds_equal_the_rules(references, name):
    folder, settings, want, _ = references(name)
    pipe = Pipeline(ModelFolder(folder))
    addons = pipe.prepare_addons(settings["prompt"], settings["negative_prompt"])
    got = pipe.encode_prompt(addons, 1, cfg=True, clip_skip=settings["clip_skip"])
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    # the weights matter: the same chunks unweighted are far from it
    flat = [np.asarray(c.weights) for c in addons.prompt.chunks]
    assert any((w != 1).any() for w in flat)
    for c in addons.prompt.chunks:
        c.weights = [1.0] * 77
    unweighted = pipe.encode_prompt(addons, 1, cfg=True, clip_skip=settings["clip_skip"])
    assert np.abs(unweighted - want).max() > 0.05 * np.abs(want).max()


@pytest.mark.parametrize("name", CASES)
def test_image_equals_diffusers_with_the_rules_embeddings(references, name):
    folder, settings, _, ref = references(name)
    ours = Pipeline(ModelFolder(folder)).generate(**settings).images[0]
    assert psnr(ours, ref) >= 40, f"{name}: PSNR {psnr(ours, ref):.1f} dB"


@pytest.mark.gpu
def test_webgpu_image_equals_diffusers(references):
    """The same on the WebGPU backend: the UNet's cross-attention over 3 x 77 context tokens."""
    webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")
    if not webgpu.available():
        pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)")
    folder, settings, _, ref = references("sd1-long-prompt")
    ours = Pipeline(ModelFolder(folder), webgpu).generate(**settings).images[0]
    assert psnr(ours, ref) >= 40, f"PSNR {psnr(ours, ref):.1f} dB"


def test_short_plain_prompt_is_exactly_one_chunk(sd1_tiny):
    """A prompt of at most 75 tokens without weights gives exactly the single-sequence encoding."""
    pipe = Pipeline(ModelFolder(sd1_tiny))
    prompt = "a lighthouse on a cliff at dusk, " * 5
    addons = pipe.prepare_addons(prompt, "")
    assert len(addons.prompt.chunks) == 1
    context = pipe.encode_prompt(addons, 2, cfg=True)
    te = pipe.load("text_encoder")
    # what the pipeline did before prompts had chunks: one 77-token sequence per row
    ids, empty = pipe.tokenizer.encode(prompt), pipe.tokenizer.encode("")
    np.testing.assert_array_equal(context, np.concatenate([te(np.asarray([empty] * 2)), te(np.asarray([ids] * 2))]))


@pytest.mark.parametrize("model", ["sd1_tiny", "sd2_tiny"])
def test_chunk_states_with_embedding_slots_equal_transformers(request, model):
    """Each chunk of a long prompt through our text encoder, embedding vectors in their slots, equals
    transformers' CLIPTextModel on the same ids with the vectors as extra rows of its table."""
    folder = request.getfixturevalue(model)
    te_ref = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder")
    D = te_ref.config.hidden_size
    rng = np.random.default_rng(3)
    vectors = {"emb-a": rng.standard_normal((2, D), dtype=np.float32) * 0.05,
               "emb-b": rng.standard_normal((1, D), dtype=np.float32) * 0.05}
    chunker = PromptChunker(CLIPTokenizer.from_folder(folder / "tokenizer"))
    for trigger, v in vectors.items():
        chunker.add_embedding(trigger, len(v))
    chunks = chunker.chunk("emb-a, " + "a stone tower, " * 20 + "emb-b and emb-a at night").chunks
    assert len(chunks) == 2 and all(c.embeddings for c in chunks)

    store = ModelFolder(folder).weights("text_encoder")
    ours = CLIPTextModel(ModelFolder(folder).config("text_encoder"), store.prefix(CLIPTextModel.weights_root(store)), nb)
    table = te_ref.get_input_embeddings().weight.detach()
    for c in chunks:
        got = ours(np.asarray([c.ids]), 0, [(pos, vectors[t][i]) for pos, t, i in c.embeddings])
        rows = [torch.from_numpy(vectors[t][i]) for _, t, i in c.embeddings]
        te_ref.set_input_embeddings(torch.nn.Embedding.from_pretrained(torch.cat([table, torch.stack(rows)])))
        ids = list(c.ids)
        for j, (pos, _, _) in enumerate(c.embeddings):
            ids[pos] = table.shape[0] + j
        with torch.no_grad():
            want = te_ref(torch.tensor([ids])).last_hidden_state.numpy()
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
        te_ref.set_input_embeddings(torch.nn.Embedding.from_pretrained(table))
