// ladder/matmul.wgsl: the rungs of the matmul kernel ladder (gpu.cpp style) that production does
// not run, for scripts/bench_kernels.py and scripts/bench_gpu.py (host side: scripts/kernel_ladder.py;
// checked against NumPy by tests/test_webgpu_matmul.py). Production's kernel is shaders/matmul.wgsl
// (include/gemm.wgsl: vec4 tiles of both operands, 8x8 or 4x4 outputs per invocation, split-K).
//   v0 matmul_v0     naive, one output per invocation                   BM = BN = 16
//   v1 matmul_v1     16x16 workgroup-memory tiles, one output each      BM = BN = 16
//   v2 matmul_tiled  64x64 tiles, 4x4 outputs per invocation, scalar loads
//   v3 matmul_vec4   v2 with vec4 loads of X and vec4 tiles (VEC_TM = VEC_TN = 4u): production's
//                    kernel before the GEMM core, whose weight tile took four scalar loads per vec4
//   v4 matmul_vec4   v3 with 8x8 outputs per invocation (VEC_TM = VEC_TN = 8u): 128x128 tiles
// All f32 activations; weights f32, f16 or bf16 through W_TYPE / W_LOAD.
//
// Shapes:
//   X (M, K) f32, row-major (a linear layer's batch and token axes folded into M)
//   W (N, K) row-major, a linear layer's weight; dtype f32, f16 or bf16 through W_TYPE / W_LOAD,
//     always accumulated in f32
//   Y (M, N) f32; with ACT = geglu, W and bias have 2N rows and Y = value * gelu(gate), value from
//     rows [0, N) and gate from rows [N, 2N) (diffusers' GEGLU), so the 2N-wide product never lands
//     in memory
//
// Bindings (every entry point):
//   0 p: Params (uniform)   1 x: X (read)   2 w: W (read)   3 bias: (N,) or (2N,) W_TYPE (read; a
//   dummy buffer when HAS_BIAS is false)   4 y: Y (read_write)
//
// Host constants (textual, substituted before compiling; the pipeline cache key):
//   ACT       the fused activation, include/activations.wgsl's codes (geglu included)
//   HAS_BIAS  true | false
//   VEC_TM, VEC_TN   outputs per invocation of matmul_vec4 (4u: v3, 8u: v4)
//   W_TYPE, W_LOAD   weight dtype (shaders.py)
// @defaults HAS_BIAS=false VEC_TM=4u VEC_TN=4u
//
// Entry points v2..v4 use workgroup (16, 16) and dispatch (ceil(N / BN), ceil(M / BM), 1) with
// BM x BN the tile of Y per workgroup (under geglu a tile holds value and gate columns side by side,
// so BN is half the tile's width):
//   matmul_tiled  64x64 tiles, 4x4 outputs per invocation           BM = 64, BN = 64 (geglu 32)
//   matmul_vec4   the same with vec4 loads and vec4 accumulators     BM = BN = 16 VEC_TM (geglu 8 VEC_TN)
// Every edge is bounds-checked: M, N, K need not be multiples of any tile.

struct Params {
  M: u32,
  N: u32,          // columns of Y (geglu: half the rows of W)
  K: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;  // matmul_vec4's view of X
@group(0) @binding(2) var<storage, read> w: array<W_TYPE>;
@group(0) @binding(3) var<storage, read> bias: array<W_TYPE>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

#include "include/activations.wgsl"

const has_bias: bool = HAS_BIAS;

fn bias_at(i: u32) -> f32 { return W_LOAD(bias, i); }

// W[n, k], zero outside the matrix (rows: N, or 2N for geglu)
fn w_get(n: u32, k: u32) -> f32 {
  let rows = select(p.N, 2u * p.N, ACT_KIND == ACT_GEGLU);
  if (n >= rows || k >= p.K) { return 0.0; }
  return W_LOAD(w, n * p.K + k);
}

fn x_get(m: u32, k: u32) -> f32 {
  if (m >= p.M || k >= p.K) { return 0.0; }
  return x[m * p.K + k];
}

// Y[m, n] from the accumulated value (and, for geglu, gate) sums: bias, then the activation
fn store(m: u32, n: u32, value: f32, gate: f32) {
  if (m >= p.M || n >= p.N) { return; }
  var v = value;
  var g = gate;
  if (has_bias) {
    v += bias_at(n);
    if (ACT_KIND == ACT_GEGLU) { g += bias_at(p.N + n); }
  }
  if (ACT_KIND == ACT_GEGLU) {
    v = geglu(v, g);
  } else {
    v = activate(v);
  }
  y[m * p.N + n] = v;
}

// --- matmul_tiled: 64x64 tiles, 4x4 outputs per invocation (2D register blocking) ---------------
// Invocation (tx, ty) owns rows ty + 16 i and tile columns tx + 16 j: neighbours read neighbouring
// words of workgroup memory. Tile column c holds W row n0 + c; under geglu the 64 tile columns are
// 32 output columns, value and gate interleaved so that each invocation holds both halves of its
// outputs: c = t + 16 j is output n0 + t + 16 (j / 2), value for even j, gate for odd j.

const T_BK: u32 = 16u;
var<workgroup> t2_x: array<f32, 1024>;  // [k][m], 16 x 64
var<workgroup> t2_w: array<f32, 1024>;  // [k][c], 16 x 64

fn tiled_w_col(n0: u32, c: u32, k: u32) -> f32 {
  if (ACT_KIND != ACT_GEGLU) { return w_get(n0 + c, k); }
  let j = c / 16u;
  let o = n0 + c % 16u + 16u * (j / 2u);
  if (o >= p.N) { return 0.0; }
  return w_get(select(o, p.N + o, j % 2u == 1u), k);
}

@compute @workgroup_size(16, 16)
fn matmul_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
  let tn = select(64u, 32u, ACT_KIND == ACT_GEGLU);
  let m0 = wg.y * 64u;
  let n0 = wg.x * tn;
  var acc: array<array<f32, 4>, 4>;
  for (var k0 = 0u; k0 < p.K; k0 += T_BK) {
    for (var r = 0u; r < 4u; r++) {
      let e = li + 256u * r;   // element of the 64 x 16 tiles, k fastest: coalesced reads along K
      let k = e % T_BK;
      let row = e / T_BK;
      t2_x[k * 64u + row] = x_get(m0 + row, k0 + k);
      t2_w[k * 64u + row] = tiled_w_col(n0, row, k0 + k);
    }
    workgroupBarrier();
    for (var k = 0u; k < T_BK; k++) {
      var a: array<f32, 4>;
      var b: array<f32, 4>;
      for (var i = 0u; i < 4u; i++) { a[i] = t2_x[k * 64u + lid.y + 16u * i]; }
      for (var j = 0u; j < 4u; j++) { b[j] = t2_w[k * 64u + lid.x + 16u * j]; }
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) { acc[i][j] += a[i] * b[j]; }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + lid.y + 16u * i;
    if (ACT_KIND == ACT_GEGLU) {
      store(m, n0 + lid.x, acc[i][0], acc[i][1]);
      store(m, n0 + lid.x + 16u, acc[i][2], acc[i][3]);
    } else {
      for (var j = 0u; j < 4u; j++) { store(m, n0 + lid.x + 16u * j, acc[i][j], 0.0); }
    }
  }
}

// --- matmul_vec4: matmul_tiled with vec4 loads: X read as vec4 along K, vec4 tiles and accumulators
// Invocation (tx, ty) owns TM x TN outputs: rows 4 (16 i + ty) + 0..3 and tile columns
// 4 (16 j + tx) + 0..3, each group of 4 read as one vec4 from the k-major tiles (16 neighbours read
// 16 neighbouring vec4s). TM = TN = 4: a 64x64 tile (the ladder's 8 makes 128x128 tiles, twice
// the multiply-adds per workgroup-memory read and per global load). Under geglu each column group is
// (value n, value n+1, gate n, gate n+1) for output n = n0 + 2 (16 j + tx). Needs K % 4 == 0 (so X's
// rows are whole vec4s).

const TM: u32 = VEC_TM;
const TN: u32 = VEC_TN;
const BM: u32 = 16u * TM;
const BN: u32 = 16u * TN;
var<workgroup> tv_x: array<vec4<f32>, 4u * BM>;  // [k][m / 4], 16 x BM/4 vec4
var<workgroup> tv_w: array<vec4<f32>, 4u * BN>;  // [k][c / 4]

fn vec_w_col(n0: u32, c: u32, k: u32) -> f32 {
  if (ACT_KIND != ACT_GEGLU) { return w_get(n0 + c, k); }
  let o = n0 + 2u * (c / 4u) + c % 2u;
  if (o >= p.N) { return 0.0; }
  return w_get(select(o, p.N + o, c % 4u >= 2u), k);
}

@compute @workgroup_size(16, 16)
fn matmul_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
  let tn = select(BN, BN / 2u, ACT_KIND == ACT_GEGLU);
  let m0 = wg.y * BM;
  let n0 = wg.x * tn;
  let K4 = p.K / 4u;
  var acc: array<vec4<f32>, TM * TN / 4u>;  // [i (row)][j (column group)]
  for (var k0 = 0u; k0 < p.K; k0 += 16u) {
    // X tile: 4 consecutive k of one row per load, scattered into the k-major tile
    for (var r = 0u; r < TM / 4u; r++) {
      let e = li + 256u * r;
      let xm = e / 4u;
      let xk = e % 4u;
      var xv = vec4<f32>(0.0);
      if (m0 + xm < p.M && k0 + 4u * xk < p.K) {
        xv = x4[(m0 + xm) * K4 + k0 / 4u + xk];
      }
      for (var t = 0u; t < 4u; t++) { tv_x[(4u * xk + t) * (BM / 4u) + xm / 4u][xm % 4u] = xv[t]; }
    }
    // W tile: 4 tile columns (one vec4) at one k per load, k fastest: coalesced along W's rows
    for (var r = 0u; r < TN / 4u; r++) {
      let e = li + 256u * r;
      let wk = e % 16u;
      let wc = (e / 16u) * 4u;
      let k = k0 + wk;
      tv_w[wk * (BN / 4u) + wc / 4u] = vec4<f32>(vec_w_col(n0, wc, k), vec_w_col(n0, wc + 1u, k),
                                                  vec_w_col(n0, wc + 2u, k), vec_w_col(n0, wc + 3u, k));
    }
    workgroupBarrier();
    for (var k = 0u; k < 16u; k++) {
      var a: array<vec4<f32>, TM / 4u>;
      var b: array<vec4<f32>, TN / 4u>;
      for (var i = 0u; i < TM / 4u; i++) { a[i] = tv_x[k * (BM / 4u) + 16u * i + lid.y]; }
      for (var j = 0u; j < TN / 4u; j++) { b[j] = tv_w[k * (BN / 4u) + 16u * j + lid.x]; }
      for (var i = 0u; i < TM; i++) {
        let av = a[i / 4u][i % 4u];
        for (var j = 0u; j < TN / 4u; j++) { acc[i * (TN / 4u) + j] += av * b[j]; }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < TM; i++) {
    let m = m0 + 4u * (16u * (i / 4u) + lid.y) + i % 4u;
    for (var j = 0u; j < TN / 4u; j++) {
      let g = 16u * j + lid.x;
      let v = acc[i * (TN / 4u) + j];
      if (ACT_KIND == ACT_GEGLU) {
        store(m, n0 + 2u * g, v.x, v.z);
        store(m, n0 + 2u * g + 1u, v.y, v.w);
      } else {
        for (var t = 0u; t < 4u; t++) { store(m, n0 + 4u * g + t, v[t], 0.0); }
      }
    }
  }
}

// --- v0: naive --------------------------------------------------------------------------------

@compute @workgroup_size(16, 16)
fn matmul_v0(@builtin(global_invocation_id) gid: vec3<u32>) {
  let n = gid.x;
  let m = gid.y;
  if (m >= p.M || n >= p.N) { return; }
  var acc = 0.0;
  var gate = 0.0;
  for (var k = 0u; k < p.K; k++) {
    let a = x_get(m, k);
    acc += a * w_get(n, k);
    if (ACT_KIND == ACT_GEGLU) { gate += a * w_get(p.N + n, k); }
  }
  store(m, n, acc, gate);
}

// --- v1: 16x16 tiles through workgroup memory ---------------------------------------------------

var<workgroup> t1_x: array<array<f32, 16>, 16>;  // [m][k]
var<workgroup> t1_w: array<array<f32, 16>, 16>;  // [k][n]
var<workgroup> t1_g: array<array<f32, 16>, 16>;  // [k][n], geglu's gate rows

@compute @workgroup_size(16, 16)
fn matmul_v1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let m0 = wg.y * 16u;
  let n0 = wg.x * 16u;
  var acc = 0.0;
  var gate = 0.0;
  for (var k0 = 0u; k0 < p.K; k0 += 16u) {
    // lid.x runs along K for X and W (both K-contiguous): coalesced reads
    t1_x[lid.y][lid.x] = x_get(m0 + lid.y, k0 + lid.x);
    t1_w[lid.x][lid.y] = w_get(n0 + lid.y, k0 + lid.x);
    if (ACT_KIND == ACT_GEGLU) { t1_g[lid.x][lid.y] = w_get(p.N + n0 + lid.y, k0 + lid.x); }
    workgroupBarrier();
    for (var k = 0u; k < 16u; k++) {
      let a = t1_x[lid.y][k];
      acc += a * t1_w[k][lid.x];
      if (ACT_KIND == ACT_GEGLU) { gate += a * t1_g[k][lid.x]; }
    }
    workgroupBarrier();
  }
  store(m0 + lid.y, n0 + lid.x, acc, gate);
}
