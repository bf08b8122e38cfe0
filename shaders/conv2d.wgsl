// conv2d.wgsl: 2-D convolution as an implicit GEMM (no im2col buffer), with bias, an optional fused
// residual add and a fused activation; the convs of the UNet and the VAEs. Host side:
// py/sdweb/backends/webgpu/ops/conv2d.py; reference: backends/numpy.py `conv2d`.
//
// Shapes: X (N, C, H, W) f32 NCHW; Wt (Co, C, KH, KW) of dtype W_TYPE (f32 | f16 | bf16, accumulated
// in f32); Y (N, Co, Ho, Wo) f32 with Ho = (H + 2 pad - KH) / stride + 1 (Wo alike); optional bias
// (Co,) W_TYPE and residual R of Y's shape: Y = act(conv(X, Wt) + bias + R).
//
// As a GEMM: Y[co, q] = sum_k Wt[co, k] * B[k, q] with k = (ci, ky, kx) over C*KH*KW (Wt's own
// row-major layout) and q = (n, oy, ox) over every output pixel of the batch; B[k, q] =
// X[n, ci, oy*stride - pad + ky, ox*stride - pad + kx], zero outside the image, is read straight
// from X while a tile of it is loaded. Columns of Y are pixels, so the tile is written NCHW.
//
// Bindings (entry conv2d):
//   0 p: Params (uniform)  1 x: X (read)  2 w: Wt (read)  3 bias (read; a dummy when HAS_BIAS is false)
//   4 res: R (read; a dummy when HAS_RES is false)  5 y: Y (read_write)
// Host constants: KH, KW (kernel size), HAS_BIAS, HAS_RES (true | false), ACT (include/activations.wgsl's
// codes, geglu excepted), W_TYPE / W_LOAD.
// Workgroup (16, 16); dispatch (ceil(N*Ho*Wo / 64), ceil(Co / 64), 1): a 64 (channels) x 64
// (pixels) tile of Y per workgroup, 4x4 per invocation, vec4 tiles (as matmul.wgsl v3). Every edge is
// bounds-checked (any Co, C, image size).

#include "include/activations.wgsl"

struct Params {
  C: u32,
  H: u32,
  W: u32,
  Co: u32,
  Ho: u32,
  Wo: u32,
  stride: u32,
  pad: u32,
  cols: u32,   // N * Ho * Wo
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<W_TYPE>;
@group(0) @binding(3) var<storage, read> bias: array<W_TYPE>;
@group(0) @binding(4) var<storage, read> res: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const kh: u32 = KH;
const kw: u32 = KW;
const has_bias: bool = HAS_BIAS;
const has_res: bool = HAS_RES;

fn w_at(i: u32) -> f32 { return W_LOAD(w, i); }
fn bias_at(i: u32) -> f32 { return W_LOAD(bias, i); }

var<workgroup> t_w: array<vec4<f32>, 256>;  // [k][co / 4], 16 x 16 vec4
var<workgroup> t_x: array<vec4<f32>, 256>;  // [k][q / 4]

@compute @workgroup_size(16, 16)
fn conv2d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
  let K = p.C * kh * kw;
  let P = p.Ho * p.Wo;
  let q0 = wg.x * 64u;
  let co0 = wg.y * 64u;

  // Weight tile: 4 output channels (one vec4) at one k per invocation, k fastest: coalesced rows.
  let wc = (li / 16u) * 4u;
  let wk = li % 16u;

  // Image tile: each invocation always loads the same pixel column (li % 64) at k rows li / 64 + 4 r,
  // so the pixel's position is decoded once; neighbours load neighbouring pixels.
  let xq = li % 64u;
  let xr = li / 64u;
  let q = q0 + xq;
  let q_ok = q < p.cols;
  let n = q / P;
  let pix = q % P;
  let iy0 = i32((pix / p.Wo) * p.stride) - i32(p.pad);
  let ix0 = i32((pix % p.Wo) * p.stride) - i32(p.pad);
  let x_img = n * p.C * p.H * p.W;

  var acc: array<vec4<f32>, 4>;
  for (var k0 = 0u; k0 < K; k0 += 16u) {
    var wv = vec4<f32>(0.0);
    let k = k0 + wk;
    if (k < K) {
      for (var j = 0u; j < 4u; j++) {
        if (co0 + wc + j < p.Co) { wv[j] = w_at((co0 + wc + j) * K + k); }
      }
    }
    t_w[wk * 16u + wc / 4u] = wv;
    for (var r = 0u; r < 4u; r++) {
      let kr = xr + 4u * r;
      let kk = k0 + kr;
      var v = 0.0;
      if (q_ok && kk < K) {
        let ci = kk / (kh * kw);   // divisions by constants
        let t = kk % (kh * kw);
        let iy = iy0 + i32(t / kw);
        let ix = ix0 + i32(t % kw);
        if (iy >= 0 && iy < i32(p.H) && ix >= 0 && ix < i32(p.W)) {
          v = x[x_img + (ci * p.H + u32(iy)) * p.W + u32(ix)];
        }
      }
      t_x[kr * 16u + xq / 4u][xq % 4u] = v;
    }
    workgroupBarrier();
    for (var kt = 0u; kt < 16u; kt++) {
      let a = t_w[kt * 16u + lid.y];
      let b = t_x[kt * 16u + lid.x];
      acc[0] += a.x * b;
      acc[1] += a.y * b;
      acc[2] += a.z * b;
      acc[3] += a.w * b;
    }
    workgroupBarrier();
  }

  for (var j = 0u; j < 4u; j++) {
    let qo = q0 + 4u * lid.x + j;
    if (qo >= p.cols) { break; }
    let o_img = (qo / P) * p.Co * P + qo % P;  // Y[n, 0, pixel]
    for (var i = 0u; i < 4u; i++) {
      let co = co0 + 4u * lid.y + i;
      if (co < p.Co) {
        var v = acc[i][j];
        if (has_bias) { v += bias_at(co); }
        let o = o_img + co * P;
        if (has_res) { v += res[o]; }
        y[o] = activate(v);
      }
    }
  }
}
