// elementwise.wgsl: add/mul, the tanh clamp, layout ops (upsample, pad, concat, transposes) and gathers (embedding
// rows, one token per row). Host: py/sdweb/backends/webgpu/ops/elementwise.py.
// Reference: py/sdweb/backends/numpy.py (same op names).
//
// Flat entries (@workgroup_size(256), one output element per invocation): a 1-D grid of
// G = ceil(n / 256) workgroups folded into (x, y) (include/grid.wgsl); element i = flat_index(..),
// skipped when i >= n.
//
//   entry        uniform (in order)                              bindings 1.. (last one written)
//   add          n                                               a, b, y             y = a + b
//   mul          n, s: f32, shift: f32                           x, y                y = x * s + shift
//   tanh_clamp   n, bound: f32                                   x, y        y = bound * tanh(x / bound)
//   add_channel  n, hw                                           x (NC, hw), v (NC), y
//   upsample2x   n, h, w                                         x (NC, h, w), y (NC, 2h, 2w)
//   pad2d        n, h, w, ho, wo, top, left                      x (NC, h, w), y (NC, ho, wo)
//   copy_rows    n = rows*inner, inner, dst_stride, dst_off,     x, y: y[r*dst_stride + dst_off + j]
//                src_stride, src_off                                  = x[r*src_stride + src_off + j]
//   gather       n = rows*d, d                                   ids (rows) u32, table W_TYPE (V, d),
//                                                                y (rows, d): y[r] = table[ids[r]]
// Tiled entry:
//   transpose_tiles b, r, c                                        x (b, r, c), y (b, c, r)
//                @workgroup_size(16, 16); groups (ceil(c / 16), ceil(r / 16), b)
//
// Weight dtype (gather's table): W_TYPE / W_LOAD (shaders.py); f32 for activations.

#include "include/grid.wgsl"

// --- add: y = a + b ---

struct AddParams { n: u32 }
@group(0) @binding(0) var<uniform> pa: AddParams;
@group(0) @binding(1) var<storage, read> aa: array<f32>;
@group(0) @binding(2) var<storage, read> ab: array<f32>;
@group(0) @binding(3) var<storage, read_write> ay: array<f32>;

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
       @builtin(local_invocation_id) lid: vec3u) {
    let i = flat_index(wid, nwg, lid);
    if (i >= pa.n) { return; }
    ay[i] = aa[i] + ab[i];
}

// --- mul: y = x * s + shift ---

struct MulParams { n: u32, s: f32, shift: f32 }
@group(0) @binding(0) var<uniform> pm: MulParams;
@group(0) @binding(1) var<storage, read> mx: array<f32>;
@group(0) @binding(2) var<storage, read_write> my: array<f32>;

@compute @workgroup_size(256)
fn mul(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
       @builtin(local_invocation_id) lid: vec3u) {
    let i = flat_index(wid, nwg, lid);
    if (i >= pm.n) { return; }
    my[i] = mx[i] * pm.s + pm.shift;
}

// --- tanh_clamp: y = bound * tanh(x / bound), TAESD's soft clamp of the latents ---

struct TanhParams { n: u32, bound: f32 }
@group(0) @binding(0) var<uniform> pth: TanhParams;
@group(0) @binding(1) var<storage, read> thx: array<f32>;
@group(0) @binding(2) var<storage, read_write> thy: array<f32>;

@compute @workgroup_size(256)
fn tanh_clamp(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
              @builtin(local_invocation_id) lid: vec3u) {
    let i = flat_index(wid, nwg, lid);
    if (i >= pth.n) { return; }
    // tanh is 1 in f32 beyond |10|; the clamp keeps implementations that build tanh from exp away
    // from inf / inf
    thy[i] = pth.bound * tanh(clamp(thx[i] / pth.bound, -10.0, 10.0));
}

// --- add_channel: x (N*C, hw) + v (N*C) broadcast over hw ---

struct ChannelParams { n: u32, hw: u32 }
@group(0) @binding(0) var<uniform> pc: ChannelParams;
@group(0) @binding(1) var<storage, read> cx: array<f32>;
@group(0) @binding(2) var<storage, read> cv: array<f32>;
@group(0) @binding(3) var<storage, read_write> cy: array<f32>;

@compute @workgroup_size(256)
fn add_channel(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
               @builtin(local_invocation_id) lid: vec3u) {
    let i = flat_index(wid, nwg, lid);
    if (i >= pc.n) { return; }
    cy[i] = cx[i] + cv[i / pc.hw];
}

// --- upsample2x: nearest, (NC, h, w) -> (NC, 2h, 2w) ---

struct UpParams { n: u32, h: u32, w: u32 }
@group(0) @binding(0) var<uniform> pup: UpParams;
@group(0) @binding(1) var<storage, read> upx: array<f32>;
@group(0) @binding(2) var<storage, read_write> upy: array<f32>;

@compute @workgroup_size(256)
fn upsample2x(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
              @builtin(local_invocation_id) lid: vec3u) {
    let i = flat_index(wid, nwg, lid);
    if (i >= pup.n) { return; }
    let wo = 2u * pup.w;
    let ox = i % wo;
    let t = i / wo;
    let oy = t % (2u * pup.h);
    let nc = t / (2u * pup.h);
    upy[i] = upx[(nc * pup.h + oy / 2u) * pup.w + ox / 2u];
}

// --- pad2d: zeros around, (NC, h, w) -> (NC, ho, wo) with the input at (top, left) ---

struct PadParams { n: u32, h: u32, w: u32, ho: u32, wo: u32, top: u32, left: u32 }
@group(0) @binding(0) var<uniform> pp: PadParams;
@group(0) @binding(1) var<storage, read> px: array<f32>;
@group(0) @binding(2) var<storage, read_write> py: array<f32>;

@compute @workgroup_size(256)
fn pad2d(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
         @builtin(local_invocation_id) lid: vec3u) {
    let i = flat_index(wid, nwg, lid);
    if (i >= pp.n) { return; }
    let ox = i % pp.wo;
    let t = i / pp.wo;
    let oy = t % pp.ho;
    let nc = t / pp.ho;
    // unsigned wrap-around makes x < left (or y < top) land far above w (h)
    let sx = ox - pp.left;
    let sy = oy - pp.top;
    var v = 0.0;
    if (sx < pp.w && sy < pp.h) {
        v = px[(nc * pp.h + sy) * pp.w + sx];
    }
    py[i] = v;
}

// --- copy_rows: a block of rows into a wider row: concat ---

struct CopyParams { n: u32, inner: u32, dst_stride: u32, dst_off: u32, src_stride: u32, src_off: u32 }
@group(0) @binding(0) var<uniform> pcp: CopyParams;
@group(0) @binding(1) var<storage, read> cpx: array<f32>;
@group(0) @binding(2) var<storage, read_write> cpy: array<f32>;

@compute @workgroup_size(256)
fn copy_rows(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
             @builtin(local_invocation_id) lid: vec3u) {
    let i = flat_index(wid, nwg, lid);
    if (i >= pcp.n) { return; }
    let r = i / pcp.inner;
    let j = i % pcp.inner;
    cpy[r * pcp.dst_stride + pcp.dst_off + j] = cpx[r * pcp.src_stride + pcp.src_off + j];
}

// --- gather: y (rows, d) = table[ids] (embedding lookup; pooled token) ---

struct GatherParams { n: u32, d: u32 }
@group(0) @binding(0) var<uniform> pgt: GatherParams;
@group(0) @binding(1) var<storage, read> gids: array<u32>;
@group(0) @binding(2) var<storage, read> gtable: array<W_TYPE>;
@group(0) @binding(3) var<storage, read_write> gty: array<f32>;

@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
          @builtin(local_invocation_id) lid: vec3u) {
    let i = flat_index(wid, nwg, lid);
    if (i >= pgt.n) { return; }
    let r = i / pgt.d;
    let j = i % pgt.d;
    gty[i] = W_LOAD(gtable, gids[r] * pgt.d + j);
}

// --- transpose: (b, r, c) -> (b, c, r) through a 16x16 tile in workgroup memory, so both the
// reads and the writes are coalesced (nchw_to_nlc: r = C, c = H*W; nlc_to_nchw: r = H*W, c = C) ---

struct TransposeParams { b: u32, r: u32, c: u32 }
@group(0) @binding(0) var<uniform> pt: TransposeParams;
@group(0) @binding(1) var<storage, read> tx: array<f32>;
@group(0) @binding(2) var<storage, read_write> ty: array<f32>;

var<workgroup> tile: array<array<f32, 17>, 16>;  // 17: no bank conflicts on the column reads

@compute @workgroup_size(16, 16)
fn transpose_tiles(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
    let base = wid.z * pt.r * pt.c;
    let col = wid.x * 16u + lid.x;  // input column
    let row = wid.y * 16u + lid.y;  // input row
    if (row < pt.r && col < pt.c) {
        tile[lid.y][lid.x] = tx[base + row * pt.c + col];
    }
    workgroupBarrier();
    let orow = wid.x * 16u + lid.y;  // output row = input column
    let ocol = wid.y * 16u + lid.x;  // output column = input row
    if (orow < pt.c && ocol < pt.r) {
        ty[base + orow * pt.r + ocol] = tile[lid.x][lid.y];
    }
}
