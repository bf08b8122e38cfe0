// ladder/attention.wgsl: the flash attention production ran before shaders/attention.wgsl (one query
// per invocation), kept as the benchmark ladder's rung below it (host side: scripts/kernel_ladder.py
// `attention_v1`; checked against NumPy by tests/test_webgpu_attention.py): 32 queries x 32 keys per
// workgroup of 64, the head dim staged through workgroup memory in chunks, the row max reduced
// through workgroup memory (up to 7 + 2 chunks barriers per key tile). Mirrors backends/numpy.py
// `attention`.
//
//   out[n, i, h*d + c] = sum_j softmax_j(q[n, i, h*d:] . k[n, j, h*d:] / sqrt(d)) v[n, j, h*d + c]
//   with key j hidden from query i when causal and j > i (CLIP's text encoder).
//
// Entry point `main`
//   bindings  0  var<uniform>             p: Params
//             1  var<storage, read>       q: array<f32>   (N, Lq, heads*d) rows q_stride apart
//             2  var<storage, read>       k: array<f32>   (N, Lk, heads*d) rows k_stride apart
//             3  var<storage, read>       v: array<f32>   (N, Lk, heads*d) rows v_stride apart
//             4  var<storage, read_write> o: array<f32>   (N, Lq, heads*d) rows o_stride apart
//   uniform   struct Params { batch, heads, lq, lk, d, nch, causal: u32, scale: f32,
//                             q_stride, k_stride, v_stride, o_stride,
//                             q_off, k_off, v_off, o_off: u32 }
//             element (n, t, h*d + c) of q is q[q_off + (n*lq + t)*q_stride + h*d + c] (likewise
//             k, v with lk, and o with lq); nch = ceil(d / D_CHUNK); scale = log2(e) / sqrt(d).
//   constants D_CHUNK   head-dim chunk staged in shared memory, a multiple of 8 (8 .. 40)
//             V_CHUNKS  output chunks of D_CHUNK columns held in registers by one workgroup (host: <= 160 columns)
//   dispatch  (ceil(lq / 32), batch * heads, ceil(nch / V_CHUNKS)), workgroup 64 = 8 x 8 threads
//
// One workgroup owns 32 queries of one (n, h) and D_CHUNK * V_CHUNKS output columns of them. It
// walks the keys in tiles of 32: S = Q K^T for the tile (the head dim taken D_CHUNK at a time through
// shared memory, so any d works), the running row max m and the rescale alpha = 2^(m_old - m_new),
// P = 2^(S - m) into shared memory, then O = alpha O + P V and l = alpha l + rowsum P in registers.
// Only a 32 x 32 tile of scores ever exists. When d needs more than V_CHUNKS chunks (the VAE's
// d = 512), the z workgroups each recompute S and keep their own slice of O.
// Shared memory stays under WebGPU's default 16 KiB limit for D_CHUNK <= 40.

struct Params {
    batch: u32,
    heads: u32,
    lq: u32,
    lk: u32,
    d: u32,
    nch: u32,
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
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;

const BQ: u32 = 32u;            // queries per workgroup
const BK: u32 = 32u;            // keys per tile
const DC: u32 = D_CHUNK;        // head-dim chunk
const NV: u32 = V_CHUNKS;       // output chunks per workgroup
const DC4: u32 = DC / 4u;
const BK4: u32 = BK / 4u;
const KROW: u32 = DC4 + 1u;     // K tile row pitch in vec4s; the pad spreads a row's reads over banks
const VROW: u32 = BK4 + 1u;     // V^T tile row pitch in vec4s
const CJ: u32 = DC / 8u;        // output columns per thread per chunk: tx + 8 * c
const KV_SIZE: u32 = max(BK * KROW, DC * VROW);
const NEG: f32 = -3.0e38;       // finite "minus infinity": exp2(NEG - m) is 0 and NEG - NEG is not NaN

var<workgroup> qs: array<vec4<f32>, BQ * DC4>;     // Q chunk, row-major, pre-scaled
var<workgroup> kvs: array<vec4<f32>, KV_SIZE>;      // K chunk (row-major) or V^T chunk (column-major)
var<workgroup> ps: array<vec4<f32>, BQ * BK4>;     // P tile, row-major
var<workgroup> red: array<f32, BQ * 8u>;           // per-thread partial row maxima
var<workgroup> row_m: array<f32, BQ>;              // running row max (log2 domain)
var<workgroup> row_a: array<f32, BQ>;              // this tile's rescale of O and l

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tx = lid % 8u;  // key / output column lane
    let ty = lid / 8u;  // query row lane: rows ty + 8 * i
    let q0 = wg.x * BQ;
    let n = wg.y / p.heads;
    let h = wg.y % p.heads;
    let col0 = h * p.d;
    let q_base = p.q_off + n * p.lq * p.q_stride + col0;
    let k_base = p.k_off + n * p.lk * p.k_stride + col0;
    let v_base = p.v_off + n * p.lk * p.v_stride + col0;
    let o_base = p.o_off + n * p.lq * p.o_stride + col0;
    let causal = p.causal != 0u;

    if (lid < BQ) {
        row_m[lid] = NEG;
    }
    var acc: array<f32, 4u * NV * CJ>;  // O[ty + 8i, chunk (wg.z * NV + cv), tx + 8c] at (i*NV + cv)*CJ + c
    var l: array<f32, 4>;               // row sums of P, kept by each of a row's 8 threads
    for (var i = 0u; i < 4u * NV * CJ; i++) {
        acc[i] = 0.0;
    }
    for (var i = 0u; i < 4u; i++) {
        l[i] = 0.0;
    }

    // with a causal mask, keys past the block's last query are hidden from every row of the block
    var k_end = p.lk;
    if (causal) {
        k_end = min(p.lk, q0 + BQ);
    }
    for (var k0 = 0u; k0 < k_end; k0 += BK) {
        // 1. S = (Q scale) K^T over the head dim, one chunk at a time
        var s: array<f32, 16>;  // S[ty + 8i, tx + 8j] at i*4 + j
        for (var i = 0u; i < 16u; i++) {
            s[i] = 0.0;
        }
        for (var ch = 0u; ch < p.nch; ch++) {
            let c0 = ch * DC;
            workgroupBarrier();  // the previous readers of qs / kvs are done
            if (p.nch > 1u || k0 == 0u) {  // a single chunk of Q stays in shared memory throughout
                for (var u = lid; u < BQ * DC4; u += 64u) {
                    let r = u / DC4;
                    let c = c0 + (u % DC4) * 4u;
                    let t = q0 + r;
                    var x = vec4<f32>(0.0);
                    if (t < p.lq) {
                        let base = q_base + t * p.q_stride + c;
                        for (var e = 0u; e < 4u; e++) {
                            if (c + e < p.d) {
                                x[e] = q[base + e] * p.scale;
                            }
                        }
                    }
                    qs[u] = x;
                }
            }
            for (var u = lid; u < BK * DC4; u += 64u) {
                let r = u / DC4;
                let c4 = u % DC4;
                let c = c0 + c4 * 4u;
                let t = k0 + r;
                var x = vec4<f32>(0.0);
                if (t < p.lk) {
                    let base = k_base + t * p.k_stride + c;
                    for (var e = 0u; e < 4u; e++) {
                        if (c + e < p.d) {
                            x[e] = k[base + e];
                        }
                    }
                }
                kvs[r * KROW + c4] = x;
            }
            workgroupBarrier();
            for (var c4 = 0u; c4 < DC4; c4++) {
                var kv: array<vec4<f32>, 4>;
                for (var j = 0u; j < 4u; j++) {
                    kv[j] = kvs[(tx + 8u * j) * KROW + c4];
                }
                for (var i = 0u; i < 4u; i++) {
                    let qv = qs[(ty + 8u * i) * DC4 + c4];
                    for (var j = 0u; j < 4u; j++) {
                        s[i * 4u + j] += dot(qv, kv[j]);
                    }
                }
            }
        }

        // 2. mask, then the tile's row max, combined with the running max
        for (var i = 0u; i < 4u; i++) {
            let t = q0 + ty + 8u * i;
            var mx = NEG;
            for (var j = 0u; j < 4u; j++) {
                let kj = k0 + tx + 8u * j;
                if (kj >= p.lk || (causal && kj > t)) {
                    s[i * 4u + j] = NEG;
                }
                mx = max(mx, s[i * 4u + j]);
            }
            red[(ty + 8u * i) * 8u + tx] = mx;
        }
        workgroupBarrier();
        if (lid < BQ) {
            var mx = row_m[lid];
            for (var x = 0u; x < 8u; x++) {
                mx = max(mx, red[lid * 8u + x]);
            }
            row_a[lid] = exp2(row_m[lid] - mx);
            row_m[lid] = mx;
        }
        workgroupBarrier();

        // 3. P = 2^(S - m) (hidden keys exactly 0), and rescale what was accumulated so far
        for (var i = 0u; i < 4u; i++) {
            let r = ty + 8u * i;
            let m = row_m[r];
            let a = row_a[r];
            for (var j = 0u; j < 4u; j++) {
                let sv = s[i * 4u + j];
                let c = tx + 8u * j;
                ps[r * BK4 + c / 4u][c % 4u] = select(exp2(sv - m), 0.0, sv == NEG);
            }
            l[i] *= a;
            for (var x = 0u; x < NV * CJ; x++) {
                acc[i * NV * CJ + x] *= a;
            }
        }

        // 4. O += P V, one chunk of output columns at a time, V staged transposed
        for (var cv = 0u; cv < NV; cv++) {
            let ch = wg.z * NV + cv;
            if (ch < p.nch) {
                let c0 = ch * DC;
                workgroupBarrier();  // K (or the previous V chunk) is no longer read
                for (var u = lid; u < DC * BK4; u += 64u) {
                    let c = u % DC;   // consecutive threads read consecutive columns of a V row
                    let j4 = u / DC;
                    var x = vec4<f32>(0.0);
                    if (c0 + c < p.d) {
                        for (var e = 0u; e < 4u; e++) {
                            let t = k0 + j4 * 4u + e;
                            if (t < p.lk) {
                                x[e] = v[v_base + t * p.v_stride + c0 + c];
                            }
                        }
                    }
                    kvs[c * VROW + j4] = x;
                }
                workgroupBarrier();  // V^T and P are in place
                for (var j4 = 0u; j4 < BK4; j4++) {
                    var vv: array<vec4<f32>, CJ>;
                    for (var c = 0u; c < CJ; c++) {
                        vv[c] = kvs[(tx + 8u * c) * VROW + j4];
                    }
                    for (var i = 0u; i < 4u; i++) {
                        let pv = ps[(ty + 8u * i) * BK4 + j4];
                        if (cv == 0u) {
                            l[i] += pv.x + pv.y + pv.z + pv.w;
                        }
                        for (var c = 0u; c < CJ; c++) {
                            acc[(i * NV + cv) * CJ + c] += dot(pv, vv[c]);
                        }
                    }
                }
            }
        }
        workgroupBarrier();  // P and V^T are read before the next tile overwrites them
    }

    // 5. O / l
    for (var i = 0u; i < 4u; i++) {
        let t = q0 + ty + 8u * i;
        if (t < p.lq) {
            let inv = 1.0 / l[i];  // l >= 1: the row's max key contributes 2^0
            for (var cv = 0u; cv < NV; cv++) {
                let c0 = (wg.z * NV + cv) * DC;
                for (var c = 0u; c < CJ; c++) {
                    let col = c0 + tx + 8u * c;
                    if (col < p.d) {
                        o[o_base + t * p.o_stride + col] = acc[(i * NV + cv) * CJ + c] * inv;
                    }
                }
            }
        }
    }
}
