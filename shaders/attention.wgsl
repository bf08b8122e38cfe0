// attention.wgsl: fused multi-head attention, flash-style (online softmax over key steps), after
// ONNX Runtime Web's flash_attention.wgsl.template: one query per invocation with its row of Q in
// registers, the keys walked KSTEP at a time through workgroup memory, each query's running max and
// sum kept by its own invocation. Mirrors backends/numpy.py `attention`; host side in
// py/sdweb/backends/webgpu/ops/attention.py.
//
//   out[n, i, h*d + c] = sum_j softmax_j(q[n, i, h*d:] . k[n, j, h*d:] / sqrt(d)) v[n, j, h*d + c]
//   with key j hidden from query i when causal and j > i (CLIP's text encoder).
//
// Entry point `main`
//   bindings  0  var<uniform>             p: Params
//             1  var<storage, read>       q: (N, Lq, heads*d) rows q_stride apart   (T)
//             2  var<storage, read>       k: (N, Lk, heads*d) rows k_stride apart
//             3  var<storage, read>       v: (N, Lk, heads*d) rows v_stride apart
//             4  var<storage, read_write> o: (N, Lq, heads*d) rows o_stride apart
//   uniform   struct Params { heads, lq, lk, d, causal: u32, scale: f32, q_stride, k_stride,
//                             v_stride, o_stride, q_off, k_off, v_off, o_off: u32 }
//             element (n, t, h*d + c) of q is q[q_off + (n*lq + t)*q_stride + h*d + c] (likewise
//             k, v with lk, and o with lq); scale = log2(e) / sqrt(d) (exp2 then gives e^x).
//   constants D4       vec4s of a head row, ceil(d / 4) (columns past d read as zeros)
//             OD4      output vec4s per workgroup: D4, or a slice of it (the grid's z) for big d
//             KSTEP    keys per step (both the K rows and the V slice rows fit workgroup memory)
//             WG       queries (invocations) per workgroup
//             VEC      rows load and store as whole vec4s (d, the strides and offsets multiples of 4)
//   dispatch  (ceil(lq / WG), N * heads, ceil(D4 / OD4)), workgroup (WG)
//
// Per key step: two barriers around the cooperative load of KSTEP K rows and V slices (vec4s),
// then each invocation scores its query against the KSTEP keys (reading the same K vec4 as every
// other invocation: a broadcast), updates its max m and sum l (rescale alpha = 2^(m_old - m_new))
// and O += P V in f32. Scores, softmax and O are f32 in any T; with T = f16 Q, K and V are f16 and
// the q . k products are f16 four at a time. No score matrix exists, so memory is the output's at
// any Lq, Lk. When d needs more than one slice of OD4 (the VAE's d = 512), the z workgroups each
// recompute the scores and keep their own slice of O.

struct Params {
    heads: u32,
    lq: u32,
    lk: u32,
    d: u32,
    causal: u32,
    scale: f32,
    q_stride: u32,
    k_stride: u32,
    v_stride: u32,
    o_stride: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
    o_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#if VEC
@group(0) @binding(1) var<storage, read> q4: array<vec4<T>>;
@group(0) @binding(2) var<storage, read> k4: array<vec4<T>>;
@group(0) @binding(3) var<storage, read> v4: array<vec4<T>>;
@group(0) @binding(4) var<storage, read_write> o4: array<vec4<T>>;
#else
@group(0) @binding(1) var<storage, read> q: array<T>;
@group(0) @binding(2) var<storage, read> k: array<T>;
@group(0) @binding(3) var<storage, read> v: array<T>;
@group(0) @binding(4) var<storage, read_write> o: array<T>;
#endif
// @defaults D4=10u OD4=10u KSTEP=16u WG=64u VEC=true

const D4_: u32 = D4;
const OD4_: u32 = OD4;
const KSTEP_: u32 = KSTEP;
const WG_: u32 = WG;
const NEG: f32 = -3.0e38;  // finite "minus infinity": exp2(NEG - m) is 0 and NEG - NEG is not NaN

var<workgroup> ks: array<vec4<T>, KSTEP * D4>;   // K rows of this step
var<workgroup> vs: array<vec4<T>, KSTEP * OD4>;  // V rows of this step, this workgroup's slice

// The vec4 at column 4 c of the row starting at element `base` (zeros past d)
#if VEC
fn load_q(base: u32, c: u32) -> vec4<T> { return q4[base / 4u + c]; }
fn load_k(base: u32, c: u32) -> vec4<T> { return k4[base / 4u + c]; }
fn load_v(base: u32, c: u32) -> vec4<T> { return v4[base / 4u + c]; }
fn store_o(base: u32, c: u32, x: vec4<f32>) { o4[base / 4u + c] = vec4<T>(x); }
#else
fn load_q(base: u32, c: u32) -> vec4<T> {
    var x = vec4<T>(0.0);
    for (var e = 0u; e < 4u; e++) { if (4u * c + e < p.d) { x[e] = q[base + 4u * c + e]; } }
    return x;
}
fn load_k(base: u32, c: u32) -> vec4<T> {
    var x = vec4<T>(0.0);
    for (var e = 0u; e < 4u; e++) { if (4u * c + e < p.d) { x[e] = k[base + 4u * c + e]; } }
    return x;
}
fn load_v(base: u32, c: u32) -> vec4<T> {
    var x = vec4<T>(0.0);
    for (var e = 0u; e < 4u; e++) { if (4u * c + e < p.d) { x[e] = v[base + 4u * c + e]; } }
    return x;
}
fn store_o(base: u32, c: u32, x: vec4<f32>) {
    for (var e = 0u; e < 4u; e++) { if (4u * c + e < p.d) { o[base + 4u * c + e] = T(x[e]); } }
}
#endif

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n = wg.y / p.heads;
    let col0 = (wg.y % p.heads) * p.d;
    let qi = wg.x * WG_ + li;
    let valid = qi < p.lq;
    let c_lo = wg.z * OD4_;  // first output vec4 of this workgroup's slice
    let k_base = p.k_off + n * p.lk * p.k_stride + col0;
    let v_base = p.v_off + n * p.lk * p.v_stride + col0;
    let causal = p.causal != 0u;

    var qr: array<vec4<T>, D4>;
    if (valid) {
        let base = p.q_off + (n * p.lq + qi) * p.q_stride + col0;
        for (var c = 0u; c < D4_; c++) {
            qr[c] = load_q(base, c) * T(p.scale);
        }
    }
    var acc: array<vec4<f32>, OD4>;
    var m = NEG;
    var l = 0.0;

    // with a causal mask, keys past the workgroup's last query are hidden from every query in it
    var k_end = p.lk;
    if (causal) {
        k_end = min(p.lk, wg.x * WG_ + WG_);
    }
    for (var k0 = 0u; k0 < k_end; k0 += KSTEP_) {
        workgroupBarrier();  // the previous step's K and V are read
        for (var e = li; e < KSTEP_ * D4_; e += WG_) {
            let j = k0 + e / D4_;
            var x = vec4<T>(0.0);
            if (j < p.lk) { x = load_k(k_base + j * p.k_stride, e % D4_); }
            ks[e] = x;
        }
        for (var e = li; e < KSTEP_ * OD4_; e += WG_) {
            let j = k0 + e / OD4_;
            let c = c_lo + e % OD4_;
            var x = vec4<T>(0.0);
            if (j < p.lk && c < D4_) { x = load_v(v_base + j * p.v_stride, c); }
            vs[e] = x;
        }
        workgroupBarrier();

        var s: array<f32, KSTEP>;
        var mx = m;
        for (var j = 0u; j < KSTEP_; j++) {
            var dotv = 0.0;
            for (var c = 0u; c < D4_; c++) {
                dotv += f32(dot(qr[c], ks[j * D4_ + c]));
            }
            let key = k0 + j;
            if (key >= p.lk || (causal && key > qi)) {
                dotv = NEG;
            }
            s[j] = dotv;
            mx = max(mx, dotv);
        }
        let alpha = exp2(m - mx);
        l *= alpha;
        for (var c = 0u; c < OD4_; c++) {
            acc[c] *= alpha;
        }
        for (var j = 0u; j < KSTEP_; j++) {
            let pj = select(exp2(s[j] - mx), 0.0, s[j] == NEG);
            l += pj;
            for (var c = 0u; c < OD4_; c++) {
                acc[c] += pj * vec4<f32>(vs[j * OD4_ + c]);
            }
        }
        m = mx;
    }

    if (valid) {
        let base = p.o_off + (n * p.lq + qi) * p.o_stride + col0;
        let inv = 1.0 / l;  // l >= 1: the row's max key contributes 2^0
        for (var c = 0u; c < OD4_; c++) {
            if (c_lo + c < D4_) {
                store_o(base, c_lo + c, acc[c] * inv);
            }
        }
    }
}
