// norm.wgsl: group norm (optional fused activation, optionally stored as tokens), layer norm.
// Host: py/sdweb/backends/webgpu/ops/norm.py. Reference: py/sdweb/backends/numpy.py group_norm /
// layer_norm.
//
// Statistics are one pass over the data in f32 whatever T is: shifted sums, s = sum (x - K) and
// q = sum (x - K)^2 with K the row's first element, so mean = K + s / n and var = q / n - (s / n)^2
// lose nothing to cancellation while K is within a few deviations of the mean (a row of 500 +- 0.01
// included); the workgroup's sums come from include/reduce.wgsl (subgroups where the adapter has
// them). Group norm is two dispatches, as ONNX Runtime Web's: statistics, then the apply (the adds
// its SkipGroupNorm fuses, a resnet's skip and time embedding, are already in conv2d's epilogue).
//
// Group norm, x (N, C, S) with G groups: a "row" is one group of one image, N*G rows of
// len = (C/G)*S contiguous elements.
//   gn_stats         uniform: rows, len, eps: f32                      x, stats (rows*2 f32)
//                    @workgroup_size(256), one workgroup per row, rows folded into (x, y)
//                    (include/grid.wgsl): stats[row*2 + {0, 1}] = (mean, 1/sqrt(var + eps))
//   gn_apply         uniform: n, s, c, cg                         x, stats, gamma W_TYPE (C), beta W_TYPE (C), y
//                    @workgroup_size(256), one element (one vec4 with VEC: S % 4 == 0) per
//                    invocation, flat: ceil(n / 256) folded into (x, y); n counts vec4s under VEC
//                    y = activate((x - mean) * rstd * gamma[ch] + beta[ch]), ACT: include/activations.wgsl
//   gn_apply_tokens  uniform: s, c, cg                            the same bindings; y is (N, S, C)
//                    @workgroup_size(16, 16); groups (ceil(S / 16), ceil(C / 16), N): a 16x16 tile
//                    read along S and written along C through workgroup memory, so both coalesce
//                    (the transformer's input as tokens without a transpose kernel)
// Layer norm, x (rows, d):
//   layer_norm       uniform: rows, d, eps: f32                   x, gamma W_TYPE (d), beta W_TYPE (d), y
//                    @workgroup_size(128), one workgroup per row, rows folded into (x, y) as above
//
// Weight dtype (gamma, beta): W_TYPE / W_LOAD (shaders.py); activations T.
// @defaults VEC=false

#include "include/grid.wgsl"
#include "include/activations.wgsl"
#include "include/reduce.wgsl"

fn finish_stats(t: vec2<f32>, shift: f32, n: f32, eps: f32) -> vec2<f32> {
    let m = t.x / n;
    return vec2<f32>(shift + m, inverseSqrt(max(t.y / n - m * m, 0.0) + eps));
}

// --- group norm: statistics per (image, group) row ---

struct StatsParams { rows: u32, len: u32, eps: f32 }
@group(0) @binding(0) var<uniform> ps: StatsParams;
#if VEC
@group(0) @binding(1) var<storage, read> sx4: array<vec4<T>>;
#else
@group(0) @binding(1) var<storage, read> sx: array<T>;
#endif
@group(0) @binding(2) var<storage, read_write> sstats: array<f32>;

@compute @workgroup_size(256)
fn gn_stats(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
            @builtin(local_invocation_index) lid: u32
#if SUBGROUPS
            , @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) size: u32
#endif
            ) {
#if SUBGROUPS
    sg_lane = lane;
    sg_size = size;
#endif
    let row = flat_group(wid, nwg);
    if (row >= ps.rows) { return; }  // uniform: the whole workgroup has one row
    var acc = vec2<f32>(0.0);
#if VEC
    let base = row * (ps.len / 4u);
    let shift = f32(sx4[base].x);
    for (var i = lid; i < ps.len / 4u; i += 256u) {
        let d = vec4<f32>(sx4[base + i]) - shift;
        acc += vec2<f32>(d.x + d.y + d.z + d.w, dot(d, d));
    }
#else
    let base = row * ps.len;
    let shift = f32(sx[base]);
    for (var i = lid; i < ps.len; i += 256u) {
        let d = f32(sx[base + i]) - shift;
        acc += vec2<f32>(d, d * d);
    }
#endif
    let t = sum2(acc, lid, 256u);
    if (lid == 0u) {
        let st = finish_stats(t, shift, f32(ps.len), ps.eps);
        sstats[row * 2u] = st.x;
        sstats[row * 2u + 1u] = st.y;
    }
}

// --- group norm: normalise, affine, optional activation ---

struct ApplyParams { n: u32, s: u32, c: u32, cg: u32 }
@group(0) @binding(0) var<uniform> pa: ApplyParams;
#if VEC
@group(0) @binding(1) var<storage, read> ax4: array<vec4<T>>;
@group(0) @binding(5) var<storage, read_write> ay4: array<vec4<T>>;
#else
@group(0) @binding(1) var<storage, read> ax: array<T>;
@group(0) @binding(5) var<storage, read_write> ay: array<T>;
#endif
@group(0) @binding(2) var<storage, read> astats: array<f32>;
@group(0) @binding(3) var<storage, read> agamma: array<W_TYPE>;
@group(0) @binding(4) var<storage, read> abeta: array<W_TYPE>;

// (mean, scale, beta) of channel-row nc = image * C + channel: y = (x - mean) * scale + beta (the
// mean is subtracted first: folding it into beta would cancel large terms when the mean is large)
fn affine(nc: u32) -> vec3<f32> {
    let ch = nc % pa.c;
    let row = nc / pa.cg;  // (image * C + channel) / (C/G) = image * G + group
    return vec3<f32>(astats[row * 2u], astats[row * 2u + 1u] * W_LOAD(agamma, ch), W_LOAD(abeta, ch));
}

@compute @workgroup_size(256)
fn gn_apply(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
            @builtin(local_invocation_id) lid: vec3u) {
    let i = flat_index(wid, nwg, lid);
    if (i >= pa.n) { return; }
#if VEC
    let a = affine(4u * i / pa.s);
    let v = (vec4<f32>(ax4[i]) - a.x) * a.y + a.z;
    ay4[i] = vec4<T>(vec4<f32>(activate(v.x), activate(v.y), activate(v.z), activate(v.w)));
#else
    let a = affine(i / pa.s);
    ay[i] = T(activate((f32(ax[i]) - a.x) * a.y + a.z));
#endif
}

// --- group norm stored as tokens: (N, C, S) -> (N, S, C) ---

struct TokenParams { s: u32, c: u32, cg: u32 }
@group(0) @binding(0) var<uniform> pt: TokenParams;
@group(0) @binding(1) var<storage, read> tx: array<T>;
@group(0) @binding(2) var<storage, read> tstats: array<f32>;
@group(0) @binding(3) var<storage, read> tgamma: array<W_TYPE>;
@group(0) @binding(4) var<storage, read> tbeta: array<W_TYPE>;
@group(0) @binding(5) var<storage, read_write> ty: array<T>;

var<workgroup> tile: array<array<T, 17>, 16>;  // 17: the column reads hit distinct banks

@compute @workgroup_size(16, 16)
fn gn_apply_tokens(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
    let n = wid.z;
    let ch = wid.y * 16u + lid.y;  // read: channel rows, pixels along x
    let s = wid.x * 16u + lid.x;
    if (ch < pt.c && s < pt.s) {
        let row = (n * pt.c + ch) / pt.cg;
        let scale = tstats[row * 2u + 1u] * W_LOAD(tgamma, ch);
        let v = (f32(tx[(n * pt.c + ch) * pt.s + s]) - tstats[row * 2u]) * scale + W_LOAD(tbeta, ch);
        tile[lid.y][lid.x] = T(activate(v));
    }
    workgroupBarrier();
    let so = wid.x * 16u + lid.y;  // write: token rows, channels along x
    let co = wid.y * 16u + lid.x;
    if (so < pt.s && co < pt.c) {
        ty[(n * pt.s + so) * pt.c + co] = tile[lid.x][lid.y];
    }
}

// --- layer norm over the last axis ---

struct LayerParams { rows: u32, d: u32, eps: f32 }
@group(0) @binding(0) var<uniform> pl: LayerParams;
@group(0) @binding(1) var<storage, read> lx: array<T>;
@group(0) @binding(2) var<storage, read> lgamma: array<W_TYPE>;
@group(0) @binding(3) var<storage, read> lbeta: array<W_TYPE>;
@group(0) @binding(4) var<storage, read_write> ly: array<T>;

@compute @workgroup_size(128)
fn layer_norm(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
              @builtin(local_invocation_index) lid: u32
#if SUBGROUPS
              , @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) size: u32
#endif
              ) {
#if SUBGROUPS
    sg_lane = lane;
    sg_size = size;
#endif
    let row = flat_group(wid, nwg);
    if (row >= pl.rows) { return; }  // uniform: the whole workgroup has one row
    let base = row * pl.d;
    let shift = f32(lx[base]);
    var acc = vec2<f32>(0.0);
    for (var j = lid; j < pl.d; j += 128u) {
        let d = f32(lx[base + j]) - shift;
        acc += vec2<f32>(d, d * d);
    }
    let st = finish_stats(sum2(acc, lid, 128u), shift, f32(pl.d), pl.eps);
    for (var j = lid; j < pl.d; j += 128u) {
        ly[base + j] = T((f32(lx[base + j]) - st.x) * st.y * W_LOAD(lgamma, j) + W_LOAD(lbeta, j));
    }
}
