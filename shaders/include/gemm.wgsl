// include/gemm.wgsl: the register-tiled GEMM core of matmul.wgsl and conv2d.wgsl (the pattern of
// gpu.cpp's matmul ladder and ONNX Runtime Web's matmul_packed_webgpu.ts, vec4 tiles throughout).
// Host side: py/sdweb/backends/webgpu/ops/gemm.py (the configurations and the rule that picks one).
//
//   C[p, q] = sum_k P[p, k] Q[q, k]      both operands k-contiguous, as a weight (Cout, K) and a
//                                        row-major activation (tokens, K) are stored
//
// A workgroup of WGX x WGY invocations computes a BM x BN tile of C (BM = WGY TM rows of P, BN =
// WGX TN rows of Q), walking K in steps of BK through two workgroup tiles that the including file
// fills: tile_p[r * PITCH + k4] = P[p0 + r, k0 + 4 k4 .. +3] and tile_q alike, one vec4 along k per
// slot. A row's PITCH is BK/4 + 1 vec4s: the pad puts the rows that neighbouring invocations read at
// the same time in different banks. Invocation (tx, ty) owns rows p = p0 + ty + WGY i (i < TM) and
// q = q0 + tx + WGX j (j < TN): neighbours own neighbouring q, so the epilogue's stores along q
// coalesce, and at each k4 they read one tile_p vec4 (a broadcast) and TN tile_q vec4s (distinct
// banks), then do TM x TN four-wide dot products. acc[i * TN4 + j4][c] is C[row i, column 4 j4 + c].
//
// Host constants: WGX, WGY (invocations), TM, TN (outputs per invocation; TN % 4 == 0), BK (k per
// tile, a multiple of 4), and T (the activation type) from shaders.py. With T = f16 the tiles hold
// f16 and gemm_tile accumulates one tile's dot products in f16; the including file adds each tile's
// sums into f32 accumulators (gemm_flush), so a long K never sums in f16.
// @defaults WGX=16u WGY=16u TM=8u TN=8u BK=8u

const WGX_: u32 = WGX;
const WGY_: u32 = WGY;
const NT: u32 = WGX * WGY;          // invocations per workgroup
const TM_: u32 = TM;
const TN_: u32 = TN;
const TN4: u32 = TN / 4u;
const BM: u32 = WGY * TM;           // tile rows of P
const BN: u32 = WGX * TN;           // tile rows of Q
const BK_: u32 = BK;
const BK4: u32 = BK / 4u;
const PITCH: u32 = BK / 4u + 1u;    // vec4s per tile row, padded

var<workgroup> tile_p: array<vec4<T>, BM * PITCH>;
var<workgroup> tile_q: array<vec4<T>, BN * PITCH>;

// acc += this tile's products, for invocation (tx, ty)
fn gemm_tile(tx: u32, ty: u32, acc: ptr<function, array<vec4<T>, TM * TN4>>) {
    for (var k4 = 0u; k4 < BK4; k4++) {
        var b: array<vec4<T>, TN>;
        for (var j = 0u; j < TN_; j++) {
            b[j] = tile_q[(tx + WGX_ * j) * PITCH + k4];
        }
        for (var i = 0u; i < TM_; i++) {
            let a = tile_p[(ty + WGY_ * i) * PITCH + k4];
            for (var j4 = 0u; j4 < TN4; j4++) {
                (*acc)[i * TN4 + j4] += vec4<T>(dot(a, b[4u * j4]), dot(a, b[4u * j4 + 1u]),
                                                dot(a, b[4u * j4 + 2u]), dot(a, b[4u * j4 + 3u]));
            }
        }
    }
}

// One K tile into the f32 accumulators: the products summed in T, then added in f32.
fn gemm_step(tx: u32, ty: u32, acc: ptr<function, array<vec4<f32>, TM * TN4>>) {
#if F16
    var part: array<vec4<T>, TM * TN4>;
    gemm_tile(tx, ty, &part);
    for (var i = 0u; i < TM_ * TN4; i++) {
        (*acc)[i] += vec4<f32>(part[i]);
    }
#else
    gemm_tile(tx, ty, acc);
#endif
}

// The part of K a workgroup sums: all of it, or slice wg.z of `k_split` (a multiple of BK) when
// the host splits K over the grid's z (split-K: the including file's `reduce` entry adds the slices).
fn k_range(z: u32, K: u32, k_split: u32) -> vec2<u32> {
    let kb = z * k_split;
    return vec2<u32>(kb, min(K, kb + k_split));
}
