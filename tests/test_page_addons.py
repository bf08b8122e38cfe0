"""The page's prompts and add-ons in a real browser (fixtures and helpers: tests/test_page.py): a weighted
prompt longer than one chunk, a LoRA fetched from the Hub into the LoRA panel at scale 0.7 and an
embedding added from a local file give the image `sdweb generate` makes with the same files
(PSNR >= 40 dB), and the live token count shows the chunks; the catalogue's "LCM-LoRA SD 1.5"
preset fills the form, fetches its LoRA from the Hub and gives the CLI's LCM image.
"""

from __future__ import annotations

import pytest

from test_page import ARTIFACTS, Page, chromium, cli_image, page_hub, page_server, psnr  # noqa: F401  (fixtures)

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytest.importorskip("peft")

from test_lora import make_lora  # noqa: E402

LONG = ("a (watercolor:1.3) painting of emb-one on a [rocky] cliff at dusk, gulls circling overhead, soft warm "
        "light, dramatic clouds, crashing waves, tall grass bending in the wind, a small red boat far out at sea, "
        "(distant mountains:0.8), mist over the water, stars appearing, a narrow path winding up, old stone walls, "
        "a lantern glowing in the window, seabirds, kelp, wet rocks shining, long shadows")


@pytest.fixture(scope="module")
def addon_files(sd1_tiny, tmp_path_factory, page_hub):  # noqa: F811
    """A kohya LoRA for sd1-tiny on the Hub as test/lora-style (style.safetensors) and as the LCM-LoRA's
    repo, SD 1.5's repo id holding sd1-tiny (for the preset), and an A1111 embedding on disk."""
    out = tmp_path_factory.mktemp("page-addons")
    _, kohya = make_lora(sd1_tiny, out / "made", seed=0)
    (out / "style").mkdir()
    safetensors_torch.save_file(kohya, out / "style" / "style.safetensors")
    page_hub.add_repo("test/lora-style", out / "style")
    (out / "lcm").mkdir()
    safetensors_torch.save_file(kohya, out / "lcm" / "pytorch_lora_weights.safetensors")
    page_hub.add_repo("latent-consistency/lcm-lora-sdv1-5", out / "lcm")
    page_hub.add_repo("stable-diffusion-v1-5/stable-diffusion-v1-5", sd1_tiny)
    torch.save({"string_to_param": {"*": torch.randn(2, 32, generator=torch.Generator().manual_seed(4)) * 0.05}},
               out / "emb-one.pt")
    return {"lora": out / "style" / "style.safetensors", "lcm": out / "lcm" / "pytorch_lora_weights.safetensors",
            "embedding": out / "emb-one.pt"}


@pytest.fixture()
def context(chromium):  # noqa: F811
    ctx = chromium.new_context(viewport={"width": 1280, "height": 1200})
    yield ctx
    ctx.close()


def test_long_prompt_lora_and_embedding_equal_cli(context, page_server, page_hub, addon_files, sd1_tiny, tmp_path):  # noqa: F811
    p = Page(context, page_server, page_hub, model="test/sd1-tiny")
    page = p.page
    page.fill("#lora-repo", "test/lora-style")
    page.fill("#lora-path", "style.safetensors")
    page.click("#lora-hub-add")
    row = page.locator('#lora-list .addon[data-name="lora-style"]')
    row.wait_for(timeout=30_000)
    row.locator("input.scale").fill("0.7")
    row.locator("input.scale").dispatch_event("change")
    page.set_input_files("#embedding-file", str(addon_files["embedding"]))
    page.locator('#embedding-list .addon[data-name="emb-one"]').wait_for(timeout=10_000)

    p.fill(prompt=LONG)
    page.wait_for_function("document.getElementById('prompt-count').textContent.includes('2 chunks')", timeout=60_000)
    assert page.inner_text("#prompt-count").endswith("/75 · 2 chunks")
    r = p.generate(prompt=LONG, negative_prompt="blurry", seed=31, steps=3)
    assert r["ok"], r
    s = r["settings"]
    assert s["loras"] == [{"name": "lora-style", "scale": 0.7}] and s["embeddings"] == ["emb-one"]
    ref = cli_image(sd1_tiny, s, tmp_path, ["--lora", f"{addon_files['lora']}:0.7",
                                            "--embedding", str(addon_files["embedding"])])
    assert psnr(r["png"], ref) >= 40, f"PSNR {psnr(r['png'], ref):.1f} dB"
    # the add-ons are in the image: without them the CLI makes another one
    plain = cli_image(sd1_tiny, s, tmp_path)
    assert psnr(r["png"], plain) < 35
    assert "LoRA lora-style 0.7" in page.inner_text("#result-info")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-addons.png"), full_page=True)
    assert not [c for c in p.console if c.startswith("pageerror")], p.console
    p.close()


def test_lcm_lora_preset(context, page_server, page_hub, addon_files, tmp_path):  # noqa: F811
    """The preset fills the form (SD 1.5's repo id, the LCM scheduler, 4 steps, guidance 1) and fetches
    its LoRA from the Hub into the panel at scale 1; the image is the CLI's with that LoRA."""
    p = Page(context, page_server, page_hub, model="test/sd1-tiny")
    page = p.page
    label = "LCM-LoRA SD 1.5 · 4 steps"
    page.select_option("#preset", label=label)
    page.locator('#lora-list .addon[data-name="lcm-lora-sdv1-5"]').wait_for(timeout=30_000)
    assert page.input_value("#model") == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert (page.input_value("#scheduler"), page.input_value("#steps"), page.input_value("#guidance")) == ("lcm", "4", "1")
    assert page.input_value('#lora-list .addon[data-name="lcm-lora-sdv1-5"] input.scale') == "1"
    r = p.generate(steps=4, guidance=1, seed=8)
    assert r["ok"], r
    s = r["settings"]
    assert (s["scheduler"], s["steps"], s["guidance"]) == ("lcm", 4, 1.0)
    assert s["loras"] == [{"name": "lcm-lora-sdv1-5", "scale": 1.0}]
    ref = cli_image(page_hub.repo_dir("stable-diffusion-v1-5/stable-diffusion-v1-5"), s, tmp_path,
                    ["--lora", f"{addon_files['lcm']}:1"])
    assert psnr(r["png"], ref) >= 40, f"PSNR {psnr(r['png'], ref):.1f} dB"
    p.close()
