// conv2d.wgsl: 2-D convolution as an implicit GEMM (no im2col buffer) with bias, a per-image channel
// add (the resnet's time embedding), a residual and an activation fused into the epilogue; the
// convs of the UNet and the VAEs, and linear layers whose output is an image (the transformer's
// proj_out). Host side: py/sdweb/backends/webgpu/ops/conv2d.py (configurations: ops/gemm.py);
// reference: backends/numpy.py `conv2d` (and `linear` with image=(H, W)).
//
// Shapes: X (N, C, H, W) T, NCHW; or, with TOKENS, X (N, H*W, C) T, a 1x1 conv over tokens. Wt
// (Co, C, KH, KW) (or (Co, C)) as the checkpoint stores it, dtype W_TYPE (f32 | f16 | bf16); Y (N,
// Co, Ho, Wo) T with Ho = (H + 2 pad - KH) / stride + 1 (Wo alike); bias (Co,) W_TYPE, E (N, Co) T
// and R of Y's shape: Y = act(conv(X, Wt) + bias + E[n, co] + R).
//
// As a GEMM (include/gemm.wgsl): C[co, q] = sum_k Wt[co, k] B[q, k], k = (ci, ky, kx) over
// C*KH*KW (Wt's own row-major layout, so its tile loads are whole vec4s along k) and q = (n, oy, ox)
// over every output pixel of the batch; B[q, k] = X[n, ci, oy*stride - pad + ky, ox*stride - pad +
// kx], zero outside the image, is read straight from X while the tile is filled. Each invocation
// fills the same tile row (one output pixel) every K step, so the pixel is decoded once per kernel;
// each vec4 segment of k is decoded once and walked by increments. Tile columns are pixels, so
// neighbouring invocations store neighbouring pixels of the NCHW output.
//
// Entry points
//   main      workgroup (WGX, WGY); dispatch (ceil(N Ho Wo / BN), ceil(Co / BM), S), S the split-K
//             slices (1 without SPLIT)
//     bindings without SPLIT: 0 p: Params (uniform)  1 x: X  2 w: Wt  3 bias (a dummy when HAS_BIAS
//                             is false)  4 temb: E (dummy unless HAS_TEMB)  5 res: R (dummy unless
//                             HAS_RES)  6 y: Y
//     bindings with SPLIT:    0 p  1 x  2 w  3 part: f32 (S, Co, N Ho Wo): slice z's sums
//   reduce    (SPLIT) one output per invocation, @workgroup_size(256), a 1-D grid of ceil(N Co Ho Wo
//             / 256) folded into (x, y) (include/grid.wgsl)
//     bindings: 0 p  1 part  2 bias  3 temb  4 res  5 y
// Uniform Params { C, H, W, Co, Ho, Wo, stride, pad, cols = N Ho Wo, K = C KH KW, k_split, S }.
// Host constants: KH, KW, TOKENS, HAS_BIAS, HAS_TEMB, HAS_RES, ACT (include/activations.wgsl's
// codes, geglu excepted), VEC_K (K % 4 == 0: Wt's rows, and X's under TOKENS, load as whole
// vec4s), SPLIT, the tile shape (WGX, WGY, TM, TN, BK; WGY a multiple of TN), W_TYPE / W_LOAD, T.
// Every edge is bounds-checked (any Co, C, image size).
// @defaults KH=3u KW=3u TOKENS=false HAS_BIAS=false HAS_TEMB=false HAS_RES=false VEC_K=true SPLIT=false

#include "include/activations.wgsl"
#include "include/gemm.wgsl"
#include "include/grid.wgsl"

struct Params {
    C: u32,
    H: u32,
    W: u32,
    Co: u32,
    Ho: u32,
    Wo: u32,
    stride: u32,
    pad: u32,
    cols: u32,      // N * Ho * Wo
    K: u32,         // C * KH * KW
    k_split: u32,
    S: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#if TOKENS
#if VEC_K
@group(0) @binding(1) var<storage, read> x4: array<vec4<T>>;
#else
@group(0) @binding(1) var<storage, read> x: array<T>;
#endif
#else
@group(0) @binding(1) var<storage, read> x: array<T>;
#endif
#if VEC_K
@group(0) @binding(2) var<storage, read> w4: array<W_TYPE4>;
#else
@group(0) @binding(2) var<storage, read> w: array<W_TYPE>;
#endif
#if SPLIT
@group(0) @binding(3) var<storage, read_write> part_out: array<f32>;
// the reduce entry's bindings (an entry point uses one set, so the numbers may repeat)
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<W_TYPE>;
@group(0) @binding(3) var<storage, read> temb: array<T>;
@group(0) @binding(4) var<storage, read> res: array<T>;
@group(0) @binding(5) var<storage, read_write> y: array<T>;
#else
@group(0) @binding(3) var<storage, read> bias: array<W_TYPE>;
@group(0) @binding(4) var<storage, read> temb: array<T>;
@group(0) @binding(5) var<storage, read> res: array<T>;
@group(0) @binding(6) var<storage, read_write> y: array<T>;
#endif

const KH_: u32 = KH;
const KW_: u32 = KW;
const KHW: u32 = KH * KW;

// Wt[co, k .. k+3] as T, zero past Co or the slice's end ke
fn w_vec(co: u32, k: u32, ke: u32) -> vec4<T> {
    if (co >= p.Co) { return vec4<T>(0.0); }
#if VEC_K
    if (k >= ke) { return vec4<T>(0.0); }
    return vec4<T>(W_LOAD4(w4, (co * p.K + k) / 4u));
#else
    var v = vec4<T>(0.0);
    for (var c = 0u; c < 4u; c++) {
        if (k + c < ke) { v[c] = T(W_LOAD(w, co * p.K + k + c)); }
    }
    return v;
#endif
}

// Where an output pixel's patch starts: x's offset of image n, and (iy0, ix0)
struct Pixel {
    base: u32,
    iy0: i32,
    ix0: i32,
}

fn pixel(q: u32) -> Pixel {
    let P = p.Ho * p.Wo;
    let pix = q % P;
    let iy0 = i32((pix / p.Wo) * p.stride) - i32(p.pad);
    let ix0 = i32((pix % p.Wo) * p.stride) - i32(p.pad);
    return Pixel((q / P) * p.C * p.H * p.W, iy0, ix0);
}

// B[q, k .. k+3] for the pixel px: k decoded once into (ci, ky, kx), then stepped
fn b_vec(px: Pixel, q: u32, k: u32, ke: u32) -> vec4<T> {
    var v = vec4<T>(0.0);
    if (q >= p.cols) { return v; }
#if TOKENS
#if VEC_K
    if (k < ke) { v = x4[(q * p.K + k) / 4u]; }
#else
    for (var c = 0u; c < 4u; c++) {
        if (k + c < ke) { v[c] = x[q * p.K + k + c]; }
    }
#endif
#else
    var ci = k / KHW;
    var ky = (k % KHW) / KW_;
    var kx = k % KW_;
    for (var c = 0u; c < 4u; c++) {
        let iy = px.iy0 + i32(ky);
        let ix = px.ix0 + i32(kx);
        if (k + c < ke && iy >= 0 && iy < i32(p.H) && ix >= 0 && ix < i32(p.W)) {
            v[c] = x[px.base + (ci * p.H + u32(iy)) * p.W + u32(ix)];
        }
        kx += 1u;
        if (kx == KW_) {
            kx = 0u;
            ky += 1u;
            if (ky == KH_) {
                ky = 0u;
                ci += 1u;
            }
        }
    }
#endif
    return v;
}

// Y[n, co, pixel] = act(value + bias + E[n, co] + R), for output column q = (n, pixel) of the batch
fn store(co: u32, q: u32, value: f32) {
    if (co >= p.Co || q >= p.cols) { return; }
    let P = p.Ho * p.Wo;
    let n = q / P;
    let o = (n * p.Co + co) * P + q % P;
    var v = value;
    if (HAS_BIAS) { v += W_LOAD(bias, co); }
    if (HAS_TEMB) { v += f32(temb[n * p.Co + co]); }
    if (HAS_RES) { v += f32(res[o]); }
    y[o] = T(activate(v));
}

@compute @workgroup_size(WGX, WGY)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let p0 = wg.y * BM;  // output channels
    let q0 = wg.x * BN;  // output pixels of the batch
    let kr = k_range(wg.z, p.K, p.k_split);
    // this invocation's row of the pixel tile, every K step, and its first vec4 segment there
    let r = li % BN;
    let q = q0 + r;
    let px = pixel(q);
    var acc: array<vec4<f32>, TM * TN4>;
    for (var k0 = kr.x; k0 < kr.y; k0 += BK_) {
        for (var e = li; e < BM * BK4; e += NT) {
            let row = e / BK4;
            tile_p[row * PITCH + e % BK4] = w_vec(p0 + row, k0 + 4u * (e % BK4), kr.y);
        }
        for (var s = li / BN; s < BK4; s += NT / BN) {
            tile_q[r * PITCH + s] = b_vec(px, q, k0 + 4u * s, kr.y);
        }
        workgroupBarrier();
        gemm_step(lid.x, lid.y, &acc);
        workgroupBarrier();
    }
    for (var j4 = 0u; j4 < TN4; j4++) {
        for (var c = 0u; c < 4u; c++) {
            let qo = q0 + lid.x + WGX_ * (4u * j4 + c);
            for (var i = 0u; i < TM_; i++) {
                let co = p0 + lid.y + WGY_ * i;
                let v = acc[i * TN4 + j4][c];
#if SPLIT
                if (co < p.Co && qo < p.cols) { part_out[(wg.z * p.Co + co) * p.cols + qo] = v; }
#else
                store(co, qo, v);
#endif
            }
        }
    }
}

#if SPLIT
@compute @workgroup_size(256)
fn reduce(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
          @builtin(local_invocation_id) lid: vec3u) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.Co * p.cols) { return; }
    let co = i / p.cols;  // partials are (co, q): consecutive invocations read consecutive q
    let q = i % p.cols;
    var v = 0.0;
    for (var z = 0u; z < p.S; z++) {
        v += part[(z * p.Co + co) * p.cols + q];
    }
    store(co, q, v);
}
#endif
