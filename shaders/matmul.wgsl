// matmul.wgsl: Y = act(X . W^T + bias) + R: the linear layers of CLIP, the UNet and the VAE.
// Host side: py/sdweb/backends/webgpu/ops/matmul.py (configurations: ops/gemm.py); reference:
// backends/numpy.py `linear`.
//
// Shapes:
//   X (M, K) T, row-major (a linear layer's batch and token axes folded into M)
//   W (Nw, K) row-major, a linear layer's weight as the checkpoint stores it; dtype f32, f16 or
//     bf16 through W_TYPE / W_LOAD (shaders.py), tiles loaded as vec4 along K
//   Y (M, N) T; R (M, N) T, the residual (HAS_RES); Nw = N, or 2N with ACT = geglu: Y = value *
//     gelu(gate), value from rows [0, N) of W and gate from rows [N, 2N) (diffusers' GEGLU), so the
//     2N-wide product never lands in memory
//
// The GEMM is include/gemm.wgsl's C[p, q] with P = X (p = m) and Q = W (q = a row of W): a tile
// column is a row of W, so neighbouring invocations store neighbouring columns of Y. Under geglu a
// tile's W rows alternate value and gate per invocation (j even: value row, j odd: the gate row of
// the same output), so each invocation holds both halves of its outputs and a tile covers BN / 2
// columns of Y.
//
// Entry points
//   main      workgroup (WGX, WGY); dispatch (ceil(N / BNY), ceil(M / BM), S) with BNY = BN, or
//             BN / 2 under geglu; S = 1, or the split-K slices (SPLIT)
//     bindings without SPLIT: 0 p: Params (uniform)  1 x: X  2 w: W  3 bias: (Nw,) W_TYPE (a dummy
//                             when HAS_BIAS is false)  4 res: R (a dummy when HAS_RES is false)  5 y: Y
//     bindings with SPLIT:    0 p  1 x  2 w  3 part: f32 (S, M, Nw): slice z's sums, by W row
//   reduce    (SPLIT) one output per invocation, @workgroup_size(256), a 1-D grid of ceil(M N / 256)
//             folded into (x, y) (include/grid.wgsl): Y = epilogue(sum over S of part)
//     bindings: 0 p  1 part  2 bias  3 res  4 y
// Uniform Params { M, N, K, k_split (K per slice, a multiple of BK; K when not split), S }.
//
// Host constants: ACT (include/activations.wgsl's codes, geglu included), HAS_BIAS, HAS_RES,
// VEC_K (K % 4 == 0: X and W rows load as whole vec4s, else element by element), SPLIT, the tile
// shape of include/gemm.wgsl (WGX, WGY, TM, TN, BK), W_TYPE / W_LOAD, T.
// @defaults HAS_BIAS=false HAS_RES=false VEC_K=true SPLIT=false
// Every edge is bounds-checked: M, N, K need not be multiples of any tile.

#include "include/activations.wgsl"
#include "include/gemm.wgsl"
#include "include/grid.wgsl"

struct Params {
    M: u32,
    N: u32,          // columns of Y (geglu: half the rows of W)
    K: u32,
    k_split: u32,
    S: u32,
}

const GEGLU: bool = ACT_KIND == ACT_GEGLU;

@group(0) @binding(0) var<uniform> p: Params;
#if VEC_K
@group(0) @binding(1) var<storage, read> x4: array<vec4<T>>;
@group(0) @binding(2) var<storage, read> w4: array<W_TYPE4>;
#else
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> w: array<W_TYPE>;
#endif
#if SPLIT
@group(0) @binding(3) var<storage, read_write> part_out: array<f32>;
// the reduce entry's bindings (an entry point uses one set, so the numbers may repeat)
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<W_TYPE>;
@group(0) @binding(3) var<storage, read> res: array<T>;
@group(0) @binding(4) var<storage, read_write> y: array<T>;
#else
@group(0) @binding(3) var<storage, read> bias: array<W_TYPE>;
@group(0) @binding(4) var<storage, read> res: array<T>;
@group(0) @binding(5) var<storage, read_write> y: array<T>;
#endif

// rows of W: N, or 2N under geglu
fn w_rows() -> u32 {
    return select(p.N, 2u * p.N, GEGLU);
}

// X[m, k .. k+3], zero past M or the slice's end ke (under VEC_K, k < ke means all four are inside)
fn x_vec(m: u32, k: u32, ke: u32) -> vec4<T> {
    if (m >= p.M) { return vec4<T>(0.0); }
#if VEC_K
    if (k >= ke) { return vec4<T>(0.0); }
    return x4[(m * p.K + k) / 4u];
#else
    var v = vec4<T>(0.0);
    for (var c = 0u; c < 4u; c++) {
        if (k + c < ke) { v[c] = x[m * p.K + k + c]; }
    }
    return v;
#endif
}

// W[n, k .. k+3] as T, zero past the rows or the slice's end ke
fn w_vec(n: u32, k: u32, ke: u32) -> vec4<T> {
    if (n >= w_rows()) { return vec4<T>(0.0); }
#if VEC_K
    if (k >= ke) { return vec4<T>(0.0); }
    return vec4<T>(W_LOAD4(w4, (n * p.K + k) / 4u));
#else
    var v = vec4<T>(0.0);
    for (var c = 0u; c < 4u; c++) {
        if (k + c < ke) { v[c] = T(W_LOAD(w, n * p.K + k + c)); }
    }
    return v;
#endif
}

// The W row held in tile row r = tx + WGX j of the tile whose first output column is n0: row n0 + r,
// or under geglu the value (j even) or gate (j odd) row of output n0 + tx + WGX (j / 2).
fn w_row(n0: u32, r: u32) -> u32 {
    if (!GEGLU) { return n0 + r; }
    let j = r / WGX_;
    let o = n0 + r % WGX_ + WGX_ * (j / 2u);
    if (o >= p.N) { return 0xffffffffu; }
    return select(o, p.N + o, j % 2u == 1u);
}

// Y[m, n] from the summed value (and, for geglu, gate): bias, the activation, then the residual
fn store(m: u32, n: u32, value: f32, gate: f32) {
    if (m >= p.M || n >= p.N) { return; }
    var v = value;
    var g = gate;
    if (HAS_BIAS) {
        v += W_LOAD(bias, n);
        if (GEGLU) { g += W_LOAD(bias, p.N + n); }
    }
    if (GEGLU) {
        v = geglu(v, g);
    } else {
        v = activate(v);
    }
    let i = m * p.N + n;
    if (HAS_RES) { v += f32(res[i]); }
    y[i] = T(v);
}

@compute @workgroup_size(WGX, WGY)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let m0 = wg.y * BM;
    let n0 = wg.x * select(BN, BN / 2u, GEGLU);
    let kr = k_range(wg.z, p.K, p.k_split);
    var acc: array<vec4<f32>, TM * TN4>;
    for (var k0 = kr.x; k0 < kr.y; k0 += BK_) {
        for (var e = li; e < BM * BK4; e += NT) {
            let r = e / BK4;
            tile_p[r * PITCH + e % BK4] = x_vec(m0 + r, k0 + 4u * (e % BK4), kr.y);
        }
        for (var e = li; e < BN * BK4; e += NT) {
            let r = e / BK4;
            tile_q[r * PITCH + e % BK4] = w_vec(w_row(n0, r), k0 + 4u * (e % BK4), kr.y);
        }
        workgroupBarrier();
        gemm_step(lid.x, lid.y, &acc);
        workgroupBarrier();
    }
    for (var i = 0u; i < TM_; i++) {
        let m = m0 + lid.y + WGY_ * i;
        for (var j4 = 0u; j4 < TN4; j4++) {
            let v = acc[i * TN4 + j4];
#if SPLIT
            if (m < p.M) {
                for (var c = 0u; c < 4u; c++) {
                    let n = w_row(n0, lid.x + WGX_ * (4u * j4 + c));
                    if (n < w_rows()) { part_out[(wg.z * p.M + m) * w_rows() + n] = v[c]; }
                }
            }
#else
            if (GEGLU) {
                store(m, n0 + lid.x + WGX_ * (2u * j4), v.x, v.y);
                store(m, n0 + lid.x + WGX_ * (2u * j4 + 1u), v.z, v.w);
            } else {
                for (var c = 0u; c < 4u; c++) {
                    store(m, n0 + lid.x + WGX_ * (4u * j4 + c), v[c], 0.0);
                }
            }
#endif
        }
    }
}

#if SPLIT
@compute @workgroup_size(256)
fn reduce(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
          @builtin(local_invocation_id) lid: vec3u) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p.M * p.N) { return; }
    let m = i / p.N;
    let n = i % p.N;
    var v = 0.0;
    var g = 0.0;
    for (var z = 0u; z < p.S; z++) {
        let row = (z * p.M + m) * w_rows();
        v += part[row + n];
        if (GEGLU) { g += part[row + p.N + n]; }
    }
    store(m, n, v, g);
}
#endif
