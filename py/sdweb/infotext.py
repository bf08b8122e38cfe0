"""Settings in a PNG, in the form other tools read: AUTOMATIC1111's `parameters` text and sdweb's own JSON.

    png_text(settings) -> {"parameters": <A1111 infotext>, "sdweb": <JSON>}     what a PNG carries
    format_parameters(settings) -> str                                           the A1111 infotext
    parse_parameters(text) -> Restored(request, notes)                           A1111 infotext -> request
    read_png(data) -> Restored(request, notes, source)                           a PNG's settings

The CLI writes and reads these (`--output x.png`, `--settings-from x.png`) and so does the page, through
browser.py in the worker; no other module knows the format.

The `parameters` text is AUTOMATIC1111's infotext (stable-diffusion-webui `modules/processing.py`
`create_infotext`, parsed by `modules/infotext_utils.py` `parse_generation_parameters`):

    a lighthouse on a cliff at dusk, oil painting
    Negative prompt: blurry
    Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: owner/name

the prompt (the settings' LoRAs written into it as A1111 names them, `<lora:NAME:SCALE>` with NAME
the file's stem), a `Negative prompt:` line when there is one, then `key: value` pairs joined by ", ", a
value quoted as JSON when it holds a comma, a colon or a newline (A1111's `quote`). Sampler names are
A1111's (SAMPLERS below), with the schedule as its own "Schedule type" as A1111 1.9 and later write
it; the older combined names ("DPM++ 2M Karras") are read too. "Clip skip" counts as A1111 does: 1
is the last layer, so it is sdweb's clip_skip + 1, written only when it is 2 or more.

The `sdweb` chunk is the image's own settings as JSON (settings.FIELDS): the seed of that image, and
num_images 1, so restoring them remakes that image alone (image k of a batch has seed + k, and its
noise does not depend on the rest of the batch).

Restoring takes what makes the image (RESTORED) and leaves the machine's choices (backend, previews)
to whoever restores.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re

from .addons import ADDON_SUFFIXES
from .errors import ConfigError
from .settings import FIELDS

# sdweb scheduler -> (A1111 sampler, A1111 schedule type). diffusers' PNDM as SD 1.x configures it
# (skip_prk_steps) is PLMS, which is what A1111 calls it. "Automatic" is the sampler's own schedule;
# A1111's DPM++ 2M defaults to Karras since 1.9, so the plain one names its schedule.
SAMPLERS = {
    "ddim": ("DDIM", "Automatic"),
    "pndm": ("PLMS", "Automatic"),
    "euler": ("Euler", "Automatic"),
    "euler-a": ("Euler a", "Automatic"),
    "dpm++2m": ("DPM++ 2M", "Uniform"),
    "dpm++2m-karras": ("DPM++ 2M", "Karras"),
    "lcm": ("LCM", "Automatic"),
    "ddpm": ("DDPM", "Automatic"),
}
# What the sdweb chunk restores; backend and previews are the restoring machine's to choose.
RESTORED = tuple(f for f in FIELDS if f not in ("backend", "preview_every", "preview"))

# A1111's infotext_utils.re_param: `key: value` with the value JSON-quoted or up to the next comma.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclasses.dataclass(frozen=True)
class Restored:
    """Settings read back: `request` maps settings.FIELDS names to values (only those found);
    `notes` says, one line each, what could not be taken over; `source` is "sdweb" or "parameters"."""

    request: dict
    notes: tuple[str, ...] = ()
    source: str = "parameters"


def quote(value) -> str:
    """A1111's infotext_utils.quote: JSON-quoted when the value holds a comma, a colon or a newline."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _number(x: float) -> str:
    """7.0 -> "7", 7.5 -> "7.5" (as A1111's sliders report them)."""
    return format(float(x), "g") if float(x) != int(x) else str(int(x))


def image_settings(settings: dict, k: int = 0) -> dict:
    """Image k's own settings (settings.FIELDS) out of a run's: seed + k, num_images 1."""
    out = {f: settings.get(f) for f in FIELDS}
    out.update(seed=int(settings["seed"]) + k, num_images=1)
    return out


def format_parameters(settings: dict) -> str:
    """One image's settings (settings.FIELDS, resolved: model, prompt, negative_prompt, steps, guidance,
    seed, scheduler, width, height, clip_skip) -> A1111's infotext, as create_infotext writes it."""
    sampler, schedule = SAMPLERS[settings["scheduler"]]
    clip_skip = int(settings.get("clip_skip") or 0) + 1
    params = {
        "Steps": int(settings["steps"]),
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": _number(settings["guidance"]),
        "Seed": int(settings["seed"]),
        "Size": f"{int(settings['width'])}x{int(settings['height'])}",
        "Model": settings["model"],
        "Clip skip": clip_skip if clip_skip > 1 else None,
        # A1111's img2img and inpainting write their strength so; the input files are named in the sdweb chunk
        "Denoising strength": _number(settings["strength"]) if settings.get("strength") is not None else None,
    }
    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = settings.get("negative_prompt") or ""
    negative = f"\nNegative prompt: {negative}" if negative else ""
    prompt = " ".join([settings.get("prompt") or ""] + [f"<lora:{_lora_name(lo['name'])}:{_number(lo['scale'])}>"
                                                         for lo in settings.get("loras") or ()])
    return f"{prompt.strip()}{negative}\n{line}".strip()


def _lora_name(name: str) -> str:
    """A LoRA as <lora:NAME> calls it: a path's file stem (what A1111 and --lora-dir look NAME up by)."""
    base = re.split(r"[\\/]", name)[-1]
    return next((base[: -len(s)] for s in ADDON_SUFFIXES if base.endswith(s)), base)


def png_text(settings: dict) -> dict[str, str]:
    """The text chunks of one image's PNG: A1111's `parameters` and sdweb's exact JSON."""
    return {"parameters": format_parameters(settings), "sdweb": json.dumps({f: settings.get(f) for f in FIELDS})}


def _sampler(name: str, schedule: str | None, notes: list) -> str | None:
    """A1111 sampler (+ schedule type) -> an sdweb scheduler name, or None when sdweb has none like it."""
    name = name.strip()
    if name.endswith(" Karras"):  # the combined names A1111 wrote before 1.9
        name, schedule = name[: -len(" Karras")], "Karras"
    if name == "DPM++ 2M":
        # Since 1.9 A1111 writes the schedule, and its "Automatic" for DPM++ 2M is Karras; before,
        # it wrote none and DPM++ 2M meant the plain (uniform) schedule.
        if schedule in ("Karras", "Automatic"):
            return "dpm++2m-karras"
        if schedule not in (None, "Uniform"):
            notes.append(f"sdweb has no {schedule!r} schedule for DPM++ 2M: the uniform one is used")
        return "dpm++2m"
    scheduler = "pndm" if name == "PNDM" else next((s for s, (a, _) in SAMPLERS.items() if a == name), None)
    if scheduler is not None and schedule not in (None, "Automatic"):
        notes.append(f"sdweb has no {schedule!r} schedule for {name}: its own schedule is used")
    return scheduler


def parse_parameters(text: str) -> Restored:
    """A1111's infotext -> the settings request it describes (parse_generation_parameters' rules:
    the last line holds the parameters when it has at least three `key: value` pairs; lines before
    it are the prompt, up to a line starting `Negative prompt:`, and the negative prompt after)."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    params = {k: _unquote(v) for k, v in _PARAM.findall(last)}

    request: dict = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative)}
    notes: list[str] = []

    def whole(key, field, offset=0):
        if key in params:
            try:
                request[field] = int(params[key]) + offset
            except ValueError:
                raise ConfigError(f'PNG parameters: "{key}: {params[key]}" is not a whole number', field) from None

    whole("Steps", "steps")
    whole("Seed", "seed")
    whole("Clip skip", "clip_skip", -1)
    if "CFG scale" in params:
        try:
            request["guidance"] = float(params["CFG scale"])
        except ValueError:
            raise ConfigError(f'PNG parameters: "CFG scale: {params["CFG scale"]}" is not a number', "guidance") from None
    if "Size" in params:
        m = _SIZE.match(params["Size"])
        if not m:
            raise ConfigError(f'PNG parameters: "Size: {params["Size"]}" is not WIDTHxHEIGHT', "width")
        request["width"], request["height"] = int(m.group(1)), int(m.group(2))
    if "Sampler" in params:
        scheduler = _sampler(params["Sampler"], params.get("Schedule type"), notes)
        if scheduler is None:
            notes.append(f"sdweb has no sampler like {params['Sampler']!r}: the model's own scheduler is used "
                         f"(sdweb's: {', '.join(SAMPLERS)})")
        else:
            request["scheduler"] = scheduler
    model = params.get("Model")
    if model is not None:
        if _REPO_ID.match(model):
            request["model"] = model
        else:
            notes.append(f"the model {model!r} the PNG names is a checkpoint file, not a Hub repo id "
                         "(owner/name): choose the model yourself")
    return Restored(request, tuple(notes), "parameters")


def _from_sdweb(text: str) -> Restored:
    try:
        saved = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"the PNG's sdweb settings are not valid JSON ({e})") from None
    if not isinstance(saved, dict):
        raise ConfigError("the PNG's sdweb settings should be a JSON object")
    return Restored({k: saved[k] for k in RESTORED if saved.get(k) is not None}, (), "sdweb")


def read_png(data: bytes) -> Restored:
    """The settings a PNG carries (file bytes): sdweb's exact JSON when present, else A1111's
    `parameters` (from sdweb, A1111 or any tool writing its format). ConfigError when it carries none."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(bytes(data)))
        image.load()  # text chunks after the image data are read only with it
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ConfigError(f"not a PNG image ({e})") from None
    if image.format != "PNG":
        raise ConfigError(f"a {image.format} image: settings are read from PNG files only")
    text = getattr(image, "text", {}) or {}
    if "sdweb" in text:
        return _from_sdweb(text["sdweb"])
    if "parameters" in text:
        if text["parameters"].lstrip().startswith("{"):  # sdweb before the sdweb chunk wrote its JSON here
            return _from_sdweb(text["parameters"])
        return parse_parameters(text["parameters"])
    raise ConfigError("this PNG carries no settings (no `parameters` or `sdweb` text chunk)")
