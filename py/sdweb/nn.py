"""Layer holders shared by clip.py, unet.py, vae.py and autoencoder_tiny.py: torch.nn's leaf modules
over the backend.

Each class takes the numbers that fix its weight shapes, then `w` (a WeightView already prefixed to
the module, e.g. `w.prefix("to_q")`) and the `backend` (a module with backends/contract.py's ops).
The constructor fetches `weight`/`bias` with `backend.weight(w.get(name, shape))`, the shape
computed from those numbers, so a checkpoint that disagrees with its config is reported by the store
under the tensor's full name. `__call__` is the forward. Attribute names follow torch, so
`self.weight` is the tensor `<prefix>.weight`.

    Linear(din, dout, w, backend, bias=True)  x: (..., din) -> (..., dout); __call__(x, act=None)
    Conv2d(cin, cout, k, w, backend, stride=1, padding=0, bias=True)
                                              x: (N, cin, H, W) -> (N, cout, Ho, Wo), torch padding;
                                              __call__(x, residual=None, act=None)
    GroupNorm(groups, C, w, backend, eps=1e-6)
                                              x: (N, C, ...) -> same; __call__(x, act=None)
    LayerNorm(D, w, backend, eps=1e-5)        x: (..., D) -> same

Defaults are the torch.nn ones except GroupNorm's eps, which is 1e-6 in every diffusers block that
uses it (torch's own default is 1e-5): pass it explicitly where a config gives one.
"""

from __future__ import annotations


class Linear:
    """torch.nn.Linear: weight (dout, din), bias (dout,). `act` fuses an activation into the op."""

    def __init__(self, din: int, dout: int, w, backend, bias: bool = True):
        self.backend = backend
        self.weight = backend.weight(w.get("weight", (dout, din)))
        self.bias = backend.weight(w.get("bias", (dout,))) if bias else None

    def __call__(self, x, act: str | None = None):
        return self.backend.linear(x, self.weight, self.bias, act)  # (..., din) -> (..., dout)


class Conv2d:
    """torch.nn.Conv2d with a square kernel and symmetric padding: weight (cout, cin, k, k).
    `residual` (a tensor of the output's shape) is added to the output in the same op, and `act`
    applied after it."""

    def __init__(self, cin: int, cout: int, k: int, w, backend, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        self.backend, self.stride, self.padding = backend, stride, padding
        self.weight = backend.weight(w.get("weight", (cout, cin, k, k)))
        self.bias = backend.weight(w.get("bias", (cout,))) if bias else None

    def __call__(self, x, residual=None, act: str | None = None):
        return self.backend.conv2d(x, self.weight, self.bias, self.stride, self.padding, residual, act)


class GroupNorm:
    """torch.nn.GroupNorm(groups, C, eps, affine=True); `act="silu"` fuses the SiLU that follows it
    in resnets and before conv_out."""

    def __init__(self, groups: int, channels: int, w, backend, eps: float = 1e-6):
        self.backend, self.groups, self.eps = backend, groups, eps
        self.weight = backend.weight(w.get("weight", (channels,)))
        self.bias = backend.weight(w.get("bias", (channels,)))

    def __call__(self, x, act: str | None = None):
        return self.backend.group_norm(x, self.groups, self.weight, self.bias, self.eps, act)


class LayerNorm:
    """torch.nn.LayerNorm(D, eps) over the last axis."""

    def __init__(self, dim: int, w, backend, eps: float = 1e-5):
        self.backend, self.eps = backend, eps
        self.weight = backend.weight(w.get("weight", (dim,)))
        self.bias = backend.weight(w.get("bias", (dim,)))

    def __call__(self, x):
        return self.backend.layer_norm(x, self.weight, self.bias, self.eps)
