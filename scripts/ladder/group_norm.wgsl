// ladder/group_norm.wgsl: the three-dispatch group norm production ran before shaders/norm.wgsl's
// two (host side: scripts/kernel_ladder.py `group_norm_v1`; checked against NumPy by
// tests/test_webgpu_backend.py): two-pass statistics per chunk of 4096 elements, their merge per
// (image, group) (Chan et al.), then the normalisation. Reference: backends/numpy.py `group_norm`.
//
// Group norm, x (N, C, S) with G groups: a "row" is one group of one image, N*G rows of
// len = (C/G)*S contiguous elements, cut into chunks of `chunk` elements.
//   gn_partial   uniform: len, chunk, chunks                    x, part (rows*chunks*2)
//                @workgroup_size(256); groups (chunks, rows, 1)
//                part[(row*chunks + k)*2 + {0, 1}] = (mean, sum of squared deviations) of chunk k
//   gn_stats     uniform: rows, len, chunk, chunks, eps: f32     part, stats (rows*2)
//                @workgroup_size(64), one invocation per row; groups (ceil(rows / 64), 1, 1)
//                merges the chunks (Chan et al.) -> stats[row*2 + {0, 1}] = (mean, 1/sqrt(var + eps))
//   gn_apply     uniform: n, s, c, cg                           x, stats, gamma W_TYPE (C), beta W_TYPE (C), y
//                @workgroup_size(256), flat: G = ceil(n / 256) folded into (x, y) (include/grid.wgsl)
//                y = activate((x - mean) * rstd * gamma[ch] + beta[ch]), ACT: include/activations.wgsl
// Weight dtype (gamma, beta): W_TYPE / W_LOAD (shaders.py).

#include "include/grid.wgsl"
#include "include/activations.wgsl"

var<workgroup> red: array<f32, 256>;

// Sum of v over the first `size` invocations (a power of two); every invocation gets the sum.
// Called from uniform control flow only.
fn reduce_sum(v: f32, lid: u32, size: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = size / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();  // red is reused by the next reduction
    return total;
}

// --- group norm: partial statistics per chunk ---

struct PartialParams { len: u32, chunk: u32, chunks: u32 }
@group(0) @binding(0) var<uniform> pp: PartialParams;
@group(0) @binding(1) var<storage, read> px: array<f32>;
@group(0) @binding(2) var<storage, read_write> ppart: array<f32>;

@compute @workgroup_size(256)
fn gn_partial(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
    let k = wid.x;
    let row = wid.y;
    let start = k * pp.chunk;
    let end = min(start + pp.chunk, pp.len);
    let base = row * pp.len;
    var s = 0.0;
    for (var i = start + lid.x; i < end; i += 256u) {
        s += px[base + i];
    }
    let mean = reduce_sum(s, lid.x, 256u) / f32(end - start);
    var q = 0.0;
    for (var i = start + lid.x; i < end; i += 256u) {
        let d = px[base + i] - mean;
        q += d * d;
    }
    let m2 = reduce_sum(q, lid.x, 256u);
    if (lid.x == 0u) {
        let o = (row * pp.chunks + k) * 2u;
        ppart[o] = mean;
        ppart[o + 1u] = m2;
    }
}

// --- group norm: merge the chunks of each row ---

struct StatsParams { rows: u32, len: u32, chunk: u32, chunks: u32, eps: f32 }
@group(0) @binding(0) var<uniform> ps: StatsParams;
@group(0) @binding(1) var<storage, read> spart: array<f32>;
@group(0) @binding(2) var<storage, read_write> sstats: array<f32>;

@compute @workgroup_size(64)
fn gn_stats(@builtin(global_invocation_id) gid: vec3u) {
    let row = gid.x;
    if (row >= ps.rows) { return; }
    var n = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var k = 0u; k < ps.chunks; k++) {
        let o = (row * ps.chunks + k) * 2u;
        let nb = f32(min(ps.chunk, ps.len - k * ps.chunk));
        let delta = spart[o] - mean;
        let tot = n + nb;
        mean += delta * nb / tot;
        m2 += spart[o + 1u] + delta * delta * n * nb / tot;
        n = tot;
    }
    sstats[row * 2u] = mean;
    sstats[row * 2u + 1u] = inverseSqrt(m2 / n + ps.eps);
}

// --- group norm: normalise, affine, optional activation ---

struct ApplyParams { n: u32, s: u32, c: u32, cg: u32 }
@group(0) @binding(0) var<uniform> pa: ApplyParams;
@group(0) @binding(1) var<storage, read> ax: array<f32>;
@group(0) @binding(2) var<storage, read> astats: array<f32>;
@group(0) @binding(3) var<storage, read> agamma: array<W_TYPE>;
@group(0) @binding(4) var<storage, read> abeta: array<W_TYPE>;
@group(0) @binding(5) var<storage, read_write> ay: array<f32>;

@compute @workgroup_size(256)
fn gn_apply(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
            @builtin(local_invocation_id) lid: vec3u) {
    let i = flat_index(wid, nwg, lid);
    if (i >= pa.n) { return; }
    let nc = i / pa.s;  // image * C + channel
    let ch = nc % pa.c;
    let row = nc / pa.cg;  // (image * C + channel) / (C/G) = image * G + group
    let scale = astats[row * 2u + 1u] * W_LOAD(agamma, ch);
    ay[i] = activate((ax[i] - astats[row * 2u]) * scale + W_LOAD(abeta, ch));
}
