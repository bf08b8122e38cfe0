"""sdweb.layout: which files of a diffusers repo are needed and which weight files are read.

The references are repos as their makers wrote them: the real SD 1.5 repo's file list (its Git LFS
pointers, tests/data/real-configs) and folders saved by diffusers' own `save_pretrained` (variants,
shards). Every kind of caller (a listing, a folder, the page's round-by-round probing) must reach
the same plan for the same repo.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from sdweb import catalogue, layout
from sdweb.errors import ConfigError, ModelError
from sdweb.model import FolderFiles

REAL = Path(__file__).parent / "data" / "real-configs"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"

# The small files of the real SD 1.5 repo at 1d0c4eb (SOURCES.md), besides its LFS files.
SD15_SMALL = ["model_index.json", "README.md", "v1-inference.yaml", "feature_extractor/preprocessor_config.json",
              "safety_checker/config.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
              "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
              "tokenizer/vocab.json", "unet/config.json", "vae/config.json"]


def lfs_sizes(model: str) -> dict[str, int]:
    sizes, name = {}, None
    for line in (REAL / model / "_lfs_pointers" / "LFS_POINTERS.txt").read_text().splitlines():
        if line.startswith("== "):
            name = line[3:].strip()
        elif line.startswith("size "):
            sizes[name] = int(line.split()[1])
    return sizes


def drive(files_on_disk: dict[str, str], variant, listed: bool, repo="o/n"):
    """Plan the way the page does: answer each round's questions from `files_on_disk` (path -> text)
    and plan again. Returns (plan, rounds, every (path, read) asked about)."""
    known = layout.Known(listed=list(files_on_disk) if listed else None)
    asked, rounds = [], 0
    while True:
        rounds += 1
        assert rounds < 20, "planning does not converge"
        try:
            return layout.plan(known, variant, repo), rounds, asked
        except layout.Unknown as u:
            assert u.needs
            for n in u.needs:
                asked.append((n.path, n.read))
                if n.path not in files_on_disk:
                    known.absent.add(n.path)
                elif n.read:
                    known.texts[n.path] = files_on_disk[n.path]
                else:
                    known.present.add(n.path)


def test_the_real_sd15_repo_listing():
    sizes = lfs_sizes("stable-diffusion-v1-5")
    names = SD15_SMALL + list(sizes)
    fp16 = layout.plan(layout.Listed(names), "fp16", SD15)
    assert fp16.files == [*layout.REQUIRED_FILES, *layout.OPTIONAL_FILES, "text_encoder/model.fp16.safetensors",
                          "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"]
    assert fp16.notes == ()
    plain = layout.plan(layout.Listed(names), None, SD15)
    assert [w.files for w in plain.weights] == [("text_encoder/model.safetensors",),
                                                ("unet/diffusion_pytorch_model.safetensors",),
                                                ("vae/diffusion_pytorch_model.safetensors",)]
    # the catalogue's sizes are these files' sizes
    entry = catalogue.find(SD15)
    for variant, plan in (("fp16", fp16), ("fp32", plain)):
        assert catalogue.weight_bytes(entry, variant) == sum(sizes[p] for w in plan.weights for p in w.files)
    # never the non_ema variant unless asked for; then only where it exists
    non_ema = layout.plan(layout.Listed(names), "non_ema", SD15)
    assert [w.files[0] for w in non_ema.weights] == ["text_encoder/model.safetensors",
                                                     "unet/diffusion_pytorch_model.non_ema.safetensors",
                                                     "vae/diffusion_pytorch_model.safetensors"]
    assert non_ema.notes == ("text_encoder: no non_ema weights in the repo; taking model.safetensors",
                             "vae: no non_ema weights in the repo; taking diffusion_pytorch_model.safetensors")


def test_real_model_indexes_pass_and_others_are_named():
    for model in ("stable-diffusion-v1-5", "stable-diffusion-2-1-base"):
        layout.check_model_index((REAL / model / "model_index.json").read_text(), model)
    sdxl = {"_class_name": "StableDiffusionXLPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "EulerDiscreteScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}
    layout.check_model_index(sdxl, "x/sdxl")  # same component kinds: the UNet's config tells SDXL apart later
    sd15 = json.loads((REAL / "stable-diffusion-v1-5" / "model_index.json").read_text())
    for cls in ("StableDiffusionInpaintPipeline", "StableDiffusionImg2ImgPipeline"):  # the editing pipelines' repos
        assert layout.check_model_index(dict(sd15, _class_name=cls), "x/inpainting")["_class_name"] == cls
    # a latent consistency model (LCM Dreamshaper's model_index.json): its class is not what decides, its
    # components are, and those are an SD 1.x pipeline's (the UNet's time_cond_proj_dim says the rest)
    lcm = {"_class_name": "LatentConsistencyModelPipeline", "feature_extractor": ["transformers", "CLIPImageProcessor"],
           "requires_safety_checker": True, "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
           "scheduler": ["diffusers", "LCMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
           "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
           "vae": ["diffusers", "AutoencoderKL"]}
    assert layout.check_model_index(json.dumps(lcm), "SimianLuo/LCM_Dreamshaper_v7") == lcm
    with pytest.raises(ModelError, match=r"x/y is a DDPMPipeline model without text_encoder, vae, tokenizer"):
        layout.check_model_index({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
                                  "scheduler": ["diffusers", "DDPMScheduler"]}, "x/y")
    with pytest.raises(ModelError, match="its UNet is a UNet2DModel"):
        layout.check_model_index(dict(sdxl, unet=["diffusers", "UNet2DModel"]), "x/y")
    with pytest.raises(ModelError, match="x/y: model_index.json is not valid JSON"):
        layout.check_model_index("{", "x/y")
    with pytest.raises(ModelError, match="not a JSON object"):
        layout.check_model_index("[]", "x/y")


def test_what_is_missing_is_named():
    with pytest.raises(ModelError, match="^o/n has no model_index.json, so it is not a diffusers pipeline, and no "
                                         "config.json either: sdweb runs Stable Diffusion"):
        layout.plan(layout.Listed(["README.md", "unet/diffusion_pytorch_model.safetensors"]), "fp16", "o/n")
    # a transformers model's repo read as a tiny autoencoder: its weights have another name
    with pytest.raises(ModelError, match=r"^o/n has no model_index.json, so it is not a diffusers pipeline; as a tiny "
                                         r"autoencoder, the repo root has no .safetensors weights \(looked for "
                                         r"diffusion_pytorch_model.fp16.safetensors, .*\); it holds model.safetensors$"):
        layout.plan(layout.Listed(["config.json", "model.safetensors"]), "fp16", "o/n")
    with pytest.raises(ModelError, match=r"o/n lacks tokenizer/merges.txt: sdweb runs Stable Diffusion"):
        layout.plan(layout.Listed([p for p in layout.TEXT_FILES if p != "tokenizer/merges.txt"]), None, "o/n")
    names = list(layout.REQUIRED_FILES) + ["unet/diffusion_pytorch_model.bin", "unet/diffusion_flax_model.msgpack",
                                           "text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors"]
    with pytest.raises(ModelError) as e:
        layout.plan(layout.Listed(names), "fp16", "o/n")
    assert str(e.value).startswith("o/n: unet/ has no .safetensors weights (looked for diffusion_pytorch_model.fp16."
                                   "safetensors, diffusion_pytorch_model.safetensors.index.fp16.json, model.fp16")
    assert "it holds diffusion_flax_model.msgpack, diffusion_pytorch_model.bin, but sdweb reads only .safetensors" \
        in str(e.value)


def test_repo_ids_and_variants():
    assert layout.check_repo_id("nota-ai/bk-sdm-tiny") == "nota-ai/bk-sdm-tiny"
    for bad in ("not a repo id", "a/b/c", "../etc", "/x", "x/", None, 3):
        with pytest.raises(ConfigError, match="is not a Hub repo id: use owner/name") as e:
            layout.check_repo_id(bad)
        assert e.value.field == "model"
    assert [layout.variant_of(v) for v in (None, "", "plain", "fp32", "fp16", "non_ema")] == \
        [None, None, None, None, "fp16", "non_ema"]
    with pytest.raises(ConfigError, match="variant '../x' is not a weight variant") as e:
        layout.variant_of("../x")
    assert e.value.field == "variant"
    assert layout.variant_order("fp16") == ["fp16", None]
    assert layout.variant_order(None) == [None, "fp16"]
    assert layout.variant_order("bf16") == ["bf16", None, "fp16"]


@pytest.fixture(scope="module")
def diffusers_repo(tmp_path_factory):
    """A repo folder whose vae diffusers saved itself, sharded, plain and fp16 (save_pretrained's own
    file and shard names), beside SD-like small files; unet and text_encoder single files."""
    diffusers = pytest.importorskip("diffusers")
    base = tmp_path_factory.mktemp("repo")
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4,
                                  layers_per_block=1)
    # save_pretrained removes other weight files in its folder, so each goes to its own, merged after
    vae.save_pretrained(str(base / "a"), max_shard_size="20KB")
    vae.half().save_pretrained(str(base / "b"), max_shard_size="10KB", variant="fp16")
    root = base / "repo"
    (root / "vae").mkdir(parents=True)
    for d in ("a", "b"):
        for p in (base / d).iterdir():
            shutil.copy(p, root / "vae" / p.name)
    for p in layout.TEXT_FILES:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_text("{}")
    (root / "model_index.json").write_text((REAL / "stable-diffusion-v1-5" / "model_index.json").read_text())
    for p in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        (root / p).write_bytes(b"weights")
    return root


def test_every_caller_plans_the_same_files(diffusers_repo):
    """A bare listing (shards by their names), the folder (shards by the index's weight_map) and the
    page probing round by round, with and without a listing, choose the same files, which are the
    shards diffusers wrote."""
    on_disk = {p.relative_to(diffusers_repo).as_posix(): p.read_text(errors="replace")
               for p in diffusers_repo.rglob("*") if p.is_file()}
    written16 = sorted(p for p in on_disk if p.startswith("vae/diffusion_pytorch_model.fp16-"))
    written = sorted(p for p in on_disk if p.startswith("vae/diffusion_pytorch_model-"))
    assert len(written16) > 1 and len(written) > 1
    for variant, shards in (("fp16", written16), (None, written)):
        listed = layout.plan(layout.Listed(on_disk), variant, "o/n")
        folder = layout.plan(FolderFiles(diffusers_repo), variant, "o/n")
        probed, rounds, asked = drive(on_disk, variant, listed=False)
        with_listing, rounds_listed, asked_listed = drive(on_disk, variant, listed=True)
        assert listed == folder == probed == with_listing
        (vae,) = [w for w in listed.weights if w.component == "vae"]
        assert list(vae.files) == shards and vae.index.endswith("index.fp16.json" if variant else "index.json")
        # the unet has no fp16 file: the plain one, with a note
        assert ("unet: no fp16 weights in the repo; taking diffusion_pytorch_model.safetensors" in listed.notes) \
            == (variant == "fp16")
        # with a listing the page only asks to read model_index.json and the index; probing takes a few rounds
        assert sorted(asked_listed) == sorted([("model_index.json", True), (vae.index, True)]) and rounds_listed == 3
        # without one it asks, once each, about the small files and each component's candidates up to
        # the one it takes (layout's order), round by round
        candidates = {f"{c}/{layout.variant_name(stem + suffix, v)}" for c in layout.WEIGHT_COMPONENTS
                      for v in layout.variant_order(variant) for stem in layout.WEIGHT_STEMS
                      for suffix in (".safetensors", ".safetensors.index.json")}
        paths = {p for p, _ in asked}
        assert len(asked) == len(set(asked)) and paths <= set(layout.TEXT_FILES) | candidates | set(listed.files)
        assert "text_encoder/model.safetensors.index.json" not in paths  # a candidate after the one it took
        assert rounds == (9 if variant else 6)


def test_shards_must_be_plain_names_that_exist():
    def repo(weight_map):
        files = {p: "{}" for p in layout.REQUIRED_FILES}
        files["model_index.json"] = (REAL / "stable-diffusion-v1-5" / "model_index.json").read_text()
        files.update({"unet/diffusion_pytorch_model.safetensors": "", "vae/diffusion_pytorch_model.safetensors": "",
                      "text_encoder/model.safetensors.index.json": json.dumps({"weight_map": weight_map}),
                      "text_encoder/model-00001-of-00002.safetensors": ""})
        return files

    with pytest.raises(ModelError, match=r"o/n/text_encoder/model-00002-of-00002.safetensors not found: "
                                         r"model.safetensors.index.json lists it as a shard"):
        drive(repo({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}), None, False)
    for bad in ("../unet/diffusion_pytorch_model.safetensors", "/abs.safetensors", "a\\b.safetensors", "x\n.safetensors",
                "config.json", ".."):
        with pytest.raises(ModelError, match=re.escape(f"shard {bad!r} should be a plain .safetensors file name")):
            drive(repo({"a": bad}), None, True)
    with pytest.raises(ModelError, match="weight_map should be a non-empty object"):
        drive(repo({}), None, True)
    files = repo({"a": "model-00001-of-00002.safetensors"})
    assert drive(files, None, True)[0].weights[0].files == ("text_encoder/model-00001-of-00002.safetensors",)
    # a bare listing cannot read the index: shards are the names diffusers gives them, and there must be some
    del files["text_encoder/model-00001-of-00002.safetensors"]
    with pytest.raises(ModelError, match="no shard files named model-NNNNN-of-NNNNN.safetensors beside it"):
        layout.plan(layout.Listed(files), None, "o/n")


# The files of the Hub's madebyollin/taesd as its model card describes them: the diffusers model
# (config.json, the weights as .safetensors and as a pickle) and the original two halves for
# ComfyUI / A1111 (.pth and .safetensors).
TAESD_FILES = [".gitattributes", "README.md", "config.json", "diffusion_pytorch_model.bin",
               "diffusion_pytorch_model.safetensors", "taesd_decoder.pth", "taesd_decoder.safetensors",
               "taesd_encoder.pth", "taesd_encoder.safetensors"]


def test_a_tiny_autoencoder_repo():
    """No model_index.json, a root config.json naming AutoencoderTiny: its config and the diffusers
    weight file, whichever caller asks (a listing, the folder, the page round by round)."""
    config = (REAL / "taesd" / "config.json").read_text()
    on_disk = {p: (config if p == "config.json" else "") for p in TAESD_FILES}
    listed = layout.plan(layout.Listed(TAESD_FILES), "fp16", "madebyollin/taesd")
    assert listed.kind == "autoencoder" and listed.root == "config.json"
    assert listed.files == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert listed.weights == (layout.Weights(layout.ROOT, ("diffusion_pytorch_model.safetensors",), None),)
    assert listed.notes == ("no fp16 weights in the repo; taking diffusion_pytorch_model.safetensors",)
    for listing in (False, True):
        probed, _, asked = drive(on_disk, "fp16", listed=listing, repo="madebyollin/taesd")
        assert probed == listed
        assert ("model_index.json", True) in asked or listing
    assert layout.plan(layout.Listed(TAESD_FILES), None, "madebyollin/taesd").notes == ()
    # what the root config names decides the kind; a pipeline's root file is its model_index.json
    assert layout.check_root("config.json", config, "x")["_class_name"] == "AutoencoderTiny"
    unet = (REAL / "stable-diffusion-v1-5" / "unet" / "config.json").read_text()
    with pytest.raises(ModelError, match=r"^o/n has no model_index.json, so it is not a diffusers pipeline, and its "
                                         r"config.json describes a UNet2DConditionModel, not a tiny autoencoder: "
                                         r"sdweb runs"):
        drive(dict(on_disk, **{"config.json": unet}), None, listed=False)
    with pytest.raises(ModelError, match="o/n: config.json is not valid JSON"):
        layout.check_root("config.json", "{", "o/n")
    with pytest.raises(ModelError, match="its UNet is a UNet2DModel"):
        layout.check_root("model_index.json", {"unet": ["diffusers", "UNet2DModel"], **{
            c: ["x", "y"] for c in layout.PIPELINE_COMPONENTS if c != "unet"}}, "o/n")
