"""The backend contract: every op model code (nn.py, resnet.py, clip.py, unet.py, vae.py,
autoencoder_tiny.py) and the pipeline call, written once.

A backend is a module: `backends/numpy.py`, the readable reference (plain float32 ndarrays), and
`backends/webgpu/`, the same ops as WGSL kernels (tensors are GPU buffer handles). Each defines
exactly the names of `Backend` below, with these parameters, and no other public function;
tests/test_backend_contract.py checks both against this class, and checks that the models use every
op (the three that text-to-image itself never calls are in NOT_IN_TEXT_TO_IMAGE, with who does).

Tensors: activations are backend tensors (`.shape` a tuple of ints) from `tensor` to `numpy`;
weights are what `weight` returned for an array (or a WeightRef) from a WeightStore in its held
precision (float32, float16, or bfloat16 bits as uint16), or what `fuse_weights` made of several.
Arithmetic is float32 (the reference, and the NumPy backend's only choice); a backend that offers
"f16" in `compute_dtypes` computes in it after `set_compute("f16")`: tensors made from then on
(`tensor`, `embedding`) hold f16, every op gives its output its input's dtype, and the kernels keep
f32 where accuracy needs it (softmax and norm statistics, GEMM sums across K tiles).
Shape legend: N batch, C channels, H/W height/width, L tokens, D features, h heads, d head dim.

Several ops fuse what would otherwise be a pass of its own on a GPU: `linear` and `conv2d` add a
residual in their epilogue (and conv2d a per-image channel vector: a resnet's time embedding),
`linear` with image=(H, W) stores tokens back as an image and `group_norm` with tokens=True stores an
image as tokens (the spatial transformer's way in and out, with no transpose of its own), and
`attention` reads q, k and v as column ranges of one fused projection's output.

The fused activation is spelled `act` everywhere: None, or a name in ACTIVATIONS; linear also takes
"geglu", which halves the width. Which function each name is: backends/numpy.py `_silu`, `_gelu`
(exact, erf), `_quick_gelu`, `_relu`, `_geglu`; in WGSL shaders/include/activations.wgsl.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import SdwebError

ACTIVATIONS = ("silu", "gelu", "quick_gelu", "relu")
GEGLU = "geglu"

# Ops the text-to-image pipeline does not call, and the model code that does.
NOT_IN_TEXT_TO_IMAGE = {
    "pad2d": "resnet.Downsample2D with padding 0, the VAE encoder's (AutoencoderKL.encode: an image in)",
    "slice_tokens": "clip.CLIPTextModel.pooled (transformers' pooler_output)",
    "mul": "resnet.ResnetBlock2D with output_scale_factor != 1 (a UNet's mid_block_scale_factor), and a tiny "
           "autoencoder's image scaling (autoencoder_tiny: previews, the draft decoder)",
    "tanh_clamp": "autoencoder_tiny.DecoderTiny, the tiny autoencoder's decoder (previews, the draft decoder)",
    "fuse_lora": "weight() of a weights.Patched: a weight a LoRA changes (Pipeline.generate with loras)",
}
COMPUTE_DTYPES = ("f32", "f16")


def check_act(op: str, act, geglu: bool = False) -> None:
    """SdwebError unless `act` is None or an activation `op` fuses."""
    allowed = ACTIVATIONS + ((GEGLU,) if geglu else ())
    if act is not None and act not in allowed:
        raise SdwebError(f"{op}: activation {act!r} is not one of None, {', '.join(allowed)}")


class Backend(Protocol):
    """What a backend module provides (typing treats a module with these names as a Backend)."""

    name: str  # "numpy" | "webgpu"; written into results' settings
    takes_weight_refs: bool  # True: weight() takes a lazy store's WeightRef (the pipeline opens lazy stores)

    # --- tensors and weights ---

    def tensor(self, a):
        """Host array -> backend tensor (f32). An upload on a GPU."""

    def numpy(self, x):
        """Backend tensor -> host float32 ndarray. A readback on a GPU: it waits for the work queued."""

    def weight(self, w):
        """A held weight array (or, when takes_weight_refs, a WeightRef) -> what ops take as a weight.
        Called once per tensor when a model is built. A weights.Patched (a weight a LoRA changes) is
        its base made a weight, then fuse_lora(weight, up, down, scale) for each of its patches."""

    def fuse_lora(self, weight, up, down, scale):
        """weight (O, ...) as weight() made it, up (O, r) and down (r, K) float32 host arrays, K the
        weight's size / O -> weight + scale * (up @ down) reshaped to the weight's shape: computed in
        f32 and rounded once to the weight's held precision. The result replaces `weight` (a GPU
        writes it into the same buffer; the host makes a new array: a store's f32 weight may be a
        read-only view of its file)."""

    def fuse_weights(self, weights):
        """Weights (rows_i, *rest) of one dtype with the same trailing shape -> one weight equal to
        their concatenation along axis 0 (a fused QKV projection); the parts may be dropped after."""

    def compute_dtypes(self) -> tuple:
        """The activation dtypes this backend computes in, "f32" first (COMPUTE_DTYPES)."""

    def set_compute(self, dtype):
        """Make `dtype` (one of compute_dtypes()) the dtype of tensors made from now on; -> the
        previous one."""

    def check_weights(self, store) -> None:
        """Raise before a WeightStore's first tensor is uploaded if one cannot be held (a GPU's buffer
        limits), naming the tensor."""

    def shape(self, x) -> tuple:
        """A tensor's shape."""

    def fits(self, shape) -> bool:
        """Whether an activation of `shape` can be made here: within a GPU's buffer limits, within the
        host's per-tensor budget. Model code that can split its work (the VAE's tiles) asks first."""

    # --- linear algebra ---

    def linear(self, x, weight, bias=None, act=None, residual=None, image=None):
        """x: (..., Din), weight: (Dout, Din) or a 1x1 conv's (Dout, Din, 1, 1), bias: (Dout,) ->
        (..., Dout), then act, then + residual (the output's shape). With act="geglu" weight has 2F
        rows and the result is (..., F): first half * gelu(second half). With image=(H, W), x is
        (N, H*W, Din) tokens and the result (N, Dout, H, W) (and residual is that shape); no act."""

    def conv2d(self, x, weight, bias=None, stride=1, padding=0, residual=None, temb=None, act=None):
        """x: (N, Cin, H, W), weight: (Cout, Cin, k, k), bias: (Cout,) -> (N, Cout, Ho, Wo), zero padding
        on every side, Ho = (H + 2 padding - k) // stride + 1; plus temb (N, Cout) per image and
        channel (a resnet's projected time embedding), plus `residual` (a tensor of the output's
        shape: a resnet's skip), when given; then act (one of ACTIVATIONS), so a conv + ReLU, or
        ReLU(conv + skip), is one op."""

    def upsample_conv2d(self, x, weight, bias=None):
        """x: (N, Cin, H, W), weight: (Cout, Cin, 3, 3), bias: (Cout,) -> (N, Cout, 2H, 2W): x upsampled
        2x (nearest: each pixel repeated 2x2), then a 3x3 conv with padding 1 (an Upsample2D)."""

    def attention(self, q, k, v, heads, causal=False):
        """q: (N, Lq, h*d), k/v: (N, Lk, h*d) -> (N, Lq, h*d): softmax(q k^T / sqrt(d)) v per head, key
        j hidden from query i > j when causal. Never materialises the (Lq, Lk) scores whole. Each of
        q, k, v may be (tensor, col0): columns col0 .. col0 + h*d of a wider (N, L, S) tensor (a
        fused projection's output); h*d is then the narrowest operand's width past its col0."""

    # --- normalisation ---

    def group_norm(self, x, groups, weight, bias, eps, act=None, tokens=False):
        """x: (N, C, *spatial) -> same shape, normalised per (image, group of C/groups channels),
        then * weight + bias per channel, then act (one of ACTIVATIONS). tokens=True: x is
        (N, C, H, W) and the result (N, H*W, C)."""

    def layer_norm(self, x, weight, bias, eps):
        """x: (..., D) normalised over D, then * weight + bias."""

    # --- elementwise and layout ---

    def add(self, x, y):
        """x + y, same shapes (a residual)."""

    def mul(self, x, s, shift=0.0):
        """x * s + shift, s and shift Python floats (an image mapped between [0, 1] and [-1, 1])."""

    def tanh_clamp(self, x, bound):
        """bound * tanh(x / bound): a smooth clamp into (-bound, bound), bound a Python float."""

    def pad2d(self, x, left, right, top, bottom):
        """x: (N, C, H, W) -> (N, C, top+H+bottom, left+W+right), zeros around (torch F.pad order)."""

    def concat(self, xs, axis=1):
        """Concatenate along `axis`; the other axes agree (UNet skips on channels, CFG on the batch)."""

    def nchw_to_nlc(self, x):
        """(N, C, H, W) -> (N, H*W, C): an image as tokens."""

    def nlc_to_nchw(self, x, H, W):
        """(N, H*W, C) -> (N, C, H, W)."""

    def embedding(self, ids, table):
        """ids: (N, L) host ints -> (N, L, D) rows of table (V, D)."""

    def slice_tokens(self, x, index):
        """x: (N, L, D), index: (N,) host ints -> (N, D): token index[n] of row n."""


OPS = tuple(k for k, v in Backend.__dict__.items() if callable(v) and not k.startswith("_"))
