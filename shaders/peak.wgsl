// peak.wgsl: microkernels that measure what an adapter can do at best, the yardstick of the kernels'
// "% of peak" (scripts/bench_gpu.py, `sdweb generate --profile`, the page's Performance panel).
// Host side: py/sdweb/backends/webgpu/peak.py.
//
//   peak_fma   uniform: iters, scale: f32            y: array<f32> (one per invocation)
//           @workgroup_size(256); a 1-D grid folded into (x, y) (include/grid.wgsl)
//           each invocation runs `iters` rounds of ACCS independent vec4<T> multiply-adds (so the
//           pipeline never waits on one chain), 8 * ACCS * iters FLOPs (2 per lane per FMA), and
//           writes their sum so nothing is optimised away. T = f32, or f16 under shader-f16.
//   peak_copy  uniform: n (vec4s)                    src: array<vec4<f32>>, dst: array<vec4<f32>>
//           @workgroup_size(256), one vec4 per invocation, flat as above: 32 bytes moved each
//           (16 read, 16 written), the bandwidth a memory-bound kernel can reach.
// @defaults ACCS=8u

#include "include/grid.wgsl"

const ACCS_: u32 = ACCS;

struct FmaParams { iters: u32, scale: f32 }
@group(0) @binding(0) var<uniform> pf: FmaParams;
@group(0) @binding(1) var<storage, read_write> fy: array<f32>;

@compute @workgroup_size(256)
fn peak_fma(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
       @builtin(local_invocation_id) lid: vec3u) {
    let i = flat_index(wid, nwg, lid);
    // values that stay near 1 whatever iters is: a * 0.999.. + 0.0005.. converges instead of overflowing
    let m = vec4<T>(T(pf.scale));
    let c = vec4<T>(T(1.0 - pf.scale));
    var acc: array<vec4<T>, ACCS>;
    for (var a = 0u; a < ACCS_; a++) {
        acc[a] = vec4<T>(T(f32(i % 7u) * 0.01 + f32(a) * 0.001));
    }
    for (var k = 0u; k < pf.iters; k++) {
        for (var a = 0u; a < ACCS_; a++) {
            acc[a] = fma(acc[a], m, c);
        }
    }
    var s = vec4<T>(0.0);
    for (var a = 0u; a < ACCS_; a++) {
        s += acc[a];
    }
    fy[i] = f32(s.x + s.y + s.z + s.w);
}

struct CopyParams { n: u32 }
@group(0) @binding(0) var<uniform> pc: CopyParams;
@group(0) @binding(1) var<storage, read> csrc: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> cdst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn peak_copy(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u) {
    let i = flat_index(wid, nwg, lid);
    if (i >= pc.n) { return; }
    cdst[i] = csrc[i];
}
