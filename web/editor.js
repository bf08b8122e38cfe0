// The image editor: an input image (dropped, pasted, picked, or a result taken "as input"), a mask
// painted over it, the strength and outpainting. It decides no setting: an untouched strength is
// "the default" and Python (sdweb.settings) says what that is, checks the outpaint sides and the
// mask; the worker hands Python the image file's own bytes and the mask as a PNG, which
// sdweb.picture decodes with Pillow exactly as `sdweb generate --image --mask` does.
//
// The mask is a canvas at the image's pixel size: black (keep), white (repaint), opaque, drawn from
// a list of operations (strokes, clear, invert) so that Undo takes the last one back. On screen it
// is shown as a translucent red layer over the image; the outpainting margins (which Python masks
// itself) are shown hatched around it.

const $ = (id) => document.getElementById(id);
const OUTPAINT_STEP = 64;  // pixels a click adds to a side: a multiple of every SD model's size multiple
const SIDES = ["left", "top", "right", "bottom"];

export class Editor {
  // onChange(): the inputs changed (the page updates its notes)
  constructor({ onChange = () => {} } = {}) {
    this.onChange = onChange;
    this.file = null;  // {bytes: Uint8Array, name}
    this.bitmap = null;
    this.ops = [];  // {kind: "stroke", erase, size, points} | {kind: "clear"} | {kind: "invert"}
    this.stroke = null;
    this.outpaint = [0, 0, 0, 0];
    this.restoredOutpaint = null;  // a restored setting waiting for its image
    this.restoredFrom = {};  // the input files restored settings name
    this.strengthTouched = false;
    this.mask = document.createElement("canvas");  // the mask itself, black and white
    this.mask.getContext("2d", { willReadFrequently: true });  // read back whole on every redraw
    this.overlay = document.createElement("canvas");  // its red, translucent picture
    this.view = $("mask");  // what is shown and painted on: image + overlay + outpaint margins
    this.bind();
  }

  bind() {
    // A file dropped here is the input image; anywhere else on the page, a PNG whose settings the
    // workspace reads (workspace.js): the events stop here.
    const drop = $("image");
    for (const ev of ["dragenter", "dragover"]) {
      drop.addEventListener(ev, (e) => { e.preventDefault(); e.stopPropagation(); drop.classList.add("over"); });
    }
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      e.stopPropagation();
      drop.classList.remove("over");
      const file = [...(e.dataTransfer.files || [])][0];
      if (file) this.setFile(file);
    });
    drop.addEventListener("click", (e) => { if (e.target === drop) $("image-file").click(); });
    drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("image-file").click(); });
    $("image-file").addEventListener("change", (e) => { if (e.target.files[0]) this.setFile(e.target.files[0]); e.target.value = ""; });
    document.addEventListener("paste", (e) => {
      const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((i) => i.type.startsWith("image/"));
      if (!item) return;
      e.preventDefault();
      const file = item.getAsFile();
      this.setFile(file, file.name && file.name !== "image.png" ? file.name : "pasted.png");
    });
    $("image-remove").onclick = () => this.remove();
    $("mask-undo").onclick = () => { this.ops.pop(); this.redraw(); };
    $("mask-clear").onclick = () => { this.ops.push({ kind: "clear" }); this.redraw(); };
    $("mask-invert").onclick = () => { this.ops.push({ kind: "invert" }); this.redraw(); };
    $("mask-download").onclick = () => this.downloadMask();
    for (const tool of ["brush", "eraser"]) $(`tool-${tool}`).onclick = () => this.setTool(tool);
    $("brush-size").addEventListener("input", () => { $("brush-size-value").textContent = `${$("brush-size").value} px`; });
    $("strength").addEventListener("input", () => { this.strengthTouched = true; this.showStrength(); });
    $("strength-reset").onclick = () => { this.strengthTouched = false; this.showStrength(); };
    SIDES.forEach((side, i) => {
      $(`outpaint-${side}`).onclick = () => { this.outpaint[i] += OUTPAINT_STEP; this.redraw(); };
    });
    $("outpaint-reset").onclick = () => { this.outpaint = [0, 0, 0, 0]; this.redraw(); };
    const v = this.view;
    v.addEventListener("pointerdown", (e) => this.penDown(e));
    v.addEventListener("pointermove", (e) => this.penMove(e));
    for (const ev of ["pointerup", "pointercancel"]) v.addEventListener(ev, () => this.penUp());
    this.setTool("brush");
    this.showStrength();
  }

  // --- the input image ---------------------------------------------------------------------------

  // file: a File or Blob (a gallery image's PNG)
  async setFile(file, name) {
    await this.setImage(new Uint8Array(await file.arrayBuffer()), name || file.name || "image.png");
  }

  // bytes: the file as it is (Python decodes them); the browser decodes them only to show and to
  // size the mask, with the EXIF orientation applied as Python applies it.
  async setImage(bytes, name) {
    let bitmap;
    try {
      bitmap = await createImageBitmap(new Blob([bytes]), { imageOrientation: "from-image" });
    } catch (_) {
      this.note(`${name} is not an image this browser can show; use a PNG, JPEG or WebP file.`, "file");
      return;
    }
    this.file = { bytes, name };
    this.bitmap = bitmap;
    this.note("", "file");
    this.note("", "restored");
    for (const c of [this.mask, this.overlay]) { c.width = bitmap.width; c.height = bitmap.height; }
    this.ops = [];
    this.outpaint = this.restoredOutpaint || [0, 0, 0, 0];
    this.restoredOutpaint = null;
    this.restoredFrom = {};
    $("brush-size").max = Math.max(8, Math.round(Math.max(bitmap.width, bitmap.height) / 4));
    $("brush-size").value = Math.max(4, Math.round(Math.max(bitmap.width, bitmap.height) / 16));
    $("brush-size-value").textContent = `${$("brush-size").value} px`;
    $("image-name").textContent = `${name} · ${bitmap.width}×${bitmap.height}`;
    $("editor-tools").hidden = false;
    $("image").classList.add("loaded");
    this.redraw();
  }

  remove() {
    this.file = this.bitmap = null;
    this.ops = [];
    this.outpaint = [0, 0, 0, 0];
    $("editor-tools").hidden = true;
    $("image").classList.remove("loaded");
    this.onChange();
  }

  get hasImage() { return this.file !== null; }

  // --- painting ------------------------------------------------------------------------------------

  setTool(tool) {
    this.tool = tool;
    $("tool-brush").classList.toggle("on", tool === "brush");
    $("tool-eraser").classList.toggle("on", tool === "eraser");
  }

  // A pointer position on the view -> image pixel coordinates (the view is scaled by CSS and has
  // the outpainting margins around the image).
  toImage(e) {
    const r = this.view.getBoundingClientRect();
    const x = (e.clientX - r.left) * this.view.width / r.width - this.outpaint[0];
    const y = (e.clientY - r.top) * this.view.height / r.height - this.outpaint[1];
    return [x, y];
  }

  penDown(e) {
    if (!this.bitmap || e.button !== 0) return;
    this.view.setPointerCapture(e.pointerId);
    this.stroke = { kind: "stroke", erase: this.tool === "eraser", size: Number($("brush-size").value), points: [this.toImage(e)] };
    this.ops.push(this.stroke);
    this.paint(this.stroke, 0);
    this.show();
  }

  penMove(e) {
    if (!this.stroke) return;
    this.stroke.points.push(this.toImage(e));
    this.paint(this.stroke, this.stroke.points.length - 1);
    this.show();
  }

  penUp() {
    if (!this.stroke) return;
    this.stroke = null;
    this.onChange();
  }

  // Draw piece k of a stroke: its first point as a dot (k = 0), else the segment from point k - 1 to
  // point k; onto the mask (white, or black for the eraser) and the overlay (red, or cut out for the
  // eraser). A stroke is drawn piece by piece as the pointer moves and replayed the same way (undo),
  // so a replay gives the same pixels.
  paint(stroke, k, targets = [this.mask, this.overlay]) {
    const pts = stroke.points;
    for (const canvas of targets) {
      const onOverlay = canvas === this.overlay;
      const ctx = canvas.getContext("2d");
      ctx.save();
      ctx.globalCompositeOperation = onOverlay && stroke.erase ? "destination-out" : "source-over";
      ctx.strokeStyle = ctx.fillStyle = onOverlay ? "#ff2d2d" : stroke.erase ? "#000" : "#fff";
      ctx.lineWidth = stroke.size;
      ctx.lineCap = ctx.lineJoin = "round";
      ctx.beginPath();
      if (k === 0) {
        ctx.arc(pts[0][0], pts[0][1], stroke.size / 2, 0, 2 * Math.PI);
        ctx.fill();
      } else {
        ctx.moveTo(...pts[k - 1]);
        ctx.lineTo(...pts[k]);
        ctx.stroke();
      }
      ctx.restore();
    }
  }

  // The mask from its operations, then the overlay from the mask, then the view.
  redraw() {
    if (!this.bitmap) return;
    const ctx = this.mask.getContext("2d");
    ctx.globalCompositeOperation = "source-over";
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, this.mask.width, this.mask.height);
    for (const op of this.ops) {
      if (op.kind === "clear") {
        ctx.fillStyle = "#000";
        ctx.fillRect(0, 0, this.mask.width, this.mask.height);
      } else if (op.kind === "invert") {
        ctx.globalCompositeOperation = "difference";
        ctx.fillStyle = "#fff";
        ctx.fillRect(0, 0, this.mask.width, this.mask.height);
        ctx.globalCompositeOperation = "source-over";
      } else {
        op.points.forEach((_, k) => this.paint(op, k, [this.mask]));
      }
    }
    const px = ctx.getImageData(0, 0, this.mask.width, this.mask.height);
    const d = px.data;
    for (let i = 0; i < d.length; i += 4) {
      const a = d[i];
      d[i] = 255; d[i + 1] = 45; d[i + 2] = 45; d[i + 3] = a;
    }
    this.overlay.getContext("2d").putImageData(px, 0, 0);
    this.show();
    this.onChange();
  }

  // The view: margins hatched (outpainting: Python masks them), the image, the mask in red.
  show() {
    const [l, t, r, b] = this.outpaint;
    const w = this.bitmap.width, h = this.bitmap.height;
    const v = this.view;
    if (v.width !== w + l + r || v.height !== h + t + b) { v.width = w + l + r; v.height = h + t + b; }
    const ctx = v.getContext("2d");
    ctx.clearRect(0, 0, v.width, v.height);
    if (l + t + r + b) {
      ctx.fillStyle = hatch(ctx);
      ctx.fillRect(0, 0, v.width, v.height);
    }
    ctx.drawImage(this.bitmap, l, t);
    ctx.globalAlpha = 0.5;
    ctx.drawImage(this.overlay, l, t);
    ctx.globalAlpha = 1;
    $("outpaint-value").textContent = l + t + r + b ? SIDES.map((s, i) => `${s} ${this.outpaint[i]}`).join(", ") + " px" : "none";
    $("outpaint-reset").disabled = !(l + t + r + b);
    $("mask-undo").disabled = !this.ops.length;
  }

  // --- what the run gets ---------------------------------------------------------------------------

  showStrength() {
    $("strength-value").textContent = this.strengthTouched ? Number($("strength").value).toFixed(2) : "model default";
    $("strength-reset").hidden = !this.strengthTouched;
  }

  // The settings fields of the editor (sdweb.settings.FIELDS): null means the default.
  request() {
    if (!this.file) return { strength: null, outpaint: null };
    return { strength: this.strengthTouched ? Number($("strength").value) : null,
      outpaint: this.outpaint.some((v) => v) ? [...this.outpaint] : null };
  }

  // Whether anything is painted white: a mask of black alone repaints nothing, so it is not sent.
  get painted() {
    if (!this.bitmap || !this.ops.length) return false;
    const d = this.mask.getContext("2d").getImageData(0, 0, this.mask.width, this.mask.height).data;
    for (let i = 0; i < d.length; i += 4) if (d[i] >= 128) return true;
    return false;
  }

  async maskPng() {
    const blob = await new Promise((ok) => this.mask.toBlob(ok, "image/png"));
    return new Uint8Array(await blob.arrayBuffer());
  }

  // What the worker hands Python (sdweb.browser.read_inputs): null without an image.
  async inputs() {
    if (!this.file) return null;
    const out = { image: this.file.bytes, image_name: this.file.name };
    if (this.painted) Object.assign(out, { mask: await this.maskPng(), mask_name: "mask.png" });
    return out;
  }

  async downloadMask() {
    if (!this.bitmap) return;
    const url = URL.createObjectURL(new Blob([await this.maskPng()], { type: "image/png" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = `${this.file.name.replace(/\.[^.]*$/, "")}-mask.png`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  // The editor's notes, one per topic (file: a file refused; restored: where restored settings came
  // from; model: what the chosen model needs), shown together.
  note(text, topic) {
    this.notes = { ...this.notes, [topic]: text };
    $("editor-note").textContent = Object.values(this.notes).filter(Boolean).join(" ");
  }

  // A restored setting of a run from an image (a gallery image's or a dropped PNG's, through
  // workspace.js): strength and outpaint come back into the editor; the input files cannot, so the
  // note names the image to drop (its sha256 is in the PNG's sdweb settings).
  restore(name, value) {
    if (name === "strength") {
      $("strength").value = value;
      this.strengthTouched = true;
      this.showStrength();
    } else if (name === "outpaint") {
      if (this.bitmap) { this.outpaint = [...value]; this.redraw(); } else this.restoredOutpaint = [...value];
    } else if (name === "image" || name === "mask") {
      this.restoredFrom = { ...this.restoredFrom, [name]: value };
      const { image, mask } = this.restoredFrom;
      if (image) {
        this.note(`These settings were made from the image ${image.name} (${image.width}×${image.height})` +
          (mask ? " with a painted mask" : "") + `: drop it above${mask ? " and paint the mask again" : ""} to make ` +
          "the same image.", "restored");
      }
    }
  }
}

function hatch(ctx) {
  const tile = document.createElement("canvas");
  tile.width = tile.height = 12;
  const t = tile.getContext("2d");
  t.fillStyle = "rgba(255, 45, 45, 0.25)";
  t.fillRect(0, 0, 12, 12);
  t.strokeStyle = "rgba(255, 45, 45, 0.6)";
  t.lineWidth = 2;
  t.beginPath(); t.moveTo(0, 12); t.lineTo(12, 0); t.stroke();
  return ctx.createPattern(tile, "repeat");
}
