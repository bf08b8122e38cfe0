// matmul_ladder.wgsl: the rungs of the matmul kernel ladder (gpu.cpp style) that production never
// selects, for scripts/bench_kernels.py (host side: scripts/matmul_ladder.py). It includes the
// production shader, so its bindings, uniform, constants and epilogue (`store`: bias, then the fused
// activation) are shaders/matmul.wgsl's, and it adds the two simplest rungs:
//   v0 matmul_v0    naive, one output per invocation                   BM = BN = 16
//   v1 matmul_v1    16x16 workgroup-memory tiles, one output each      BM = BN = 16
// Both use workgroup (16, 16) and dispatch (ceil(N / 16), ceil(M / 16), 1); under geglu each
// invocation accumulates the value and the gate of its output. The other rungs are production's
// matmul_tiled (v2) and matmul_vec4 with VEC_TM = VEC_TN = 4u (v3) or 8u (v4).

#include "matmul.wgsl"

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
