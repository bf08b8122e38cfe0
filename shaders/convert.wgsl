// convert.wgsl: weight dtype conversion on the GPU, for weights uploaded straight from their file in
// one dtype and held in another (an f32 checkpoint held fp16 or bf16; an fp16 one held fp32 ...).
// Host: py/sdweb/backends/webgpu/ops/convert.py (called by upload.py). Reference: py/sdweb/weights.py
// (`_to_held`: numpy's float32 -> float16 and torch's float32 -> bfloat16, both round to nearest
// even; widening is exact).
//
//   entry    uniform (in order)        bindings 1..
//   convert  n, out_offset             src array<u32>: n elements of SRC (16-bit ones two per u32,
//                                      element 2k in the low half); dst array<u32>: the n converted
//                                      elements, packed alike, written from word out_offset on
//   @workgroup_size(256), one destination u32 per invocation: words = n for DST f32, ceil(n / 2)
//   for a 16-bit DST (an odd n leaves the last word's high half zero). A 1-D grid of
//   G = ceil(words / 256) workgroups folded into (x, y) (include/grid.wgsl).
//
//   place    n, out_offset             src: n elements of SRC; dst (the same dtype): elements
//                                      out_offset .. out_offset + n set to them, the rest kept
//   @workgroup_size(256), one destination u32 per invocation over the words those elements touch
//   (a 16-bit piece may start or end inside a word, whose other half belongs to a neighbour): the
//   parts of a fused weight (upload.fuse), one dispatch per part, in order.
//
// Constants: SRC, DST = 0 (f32) | 1 (f16) | 2 (bf16), SRC != DST for convert, SRC == DST for place.
// @defaults SRC=0 DST=1
//
// Every conversion works on bit patterns with integer ops: WGSL leaves the rounding of f32 -> f16
// and the flushing of f16 subnormals to the implementation, and the held weights must equal the
// host path's bit for bit. NaNs stay NaNs (bf16: the quiet NaN 0x7FC0, as torch makes it).

#include "include/grid.wgsl"

const SRC_KIND: u32 = SRC;
const DST_KIND: u32 = DST;

struct Params { n: u32, out_offset: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

// f16 bits -> f32 bits, exactly (subnormals normalised, inf and NaN payloads kept).
fn f16_to_f32_bits(h: u32) -> u32 {
    let s = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    var m = h & 0x3ffu;
    if (e == 0x1fu) {
        return s | 0x7f800000u | (m << 13u);
    }
    if (e == 0u) {
        if (m == 0u) {
            return s;
        }
        // m * 2^-24: shift the leading one up to bit 10, one exponent step per shift
        var ex = 113u;
        loop {
            if ((m & 0x400u) != 0u) { break; }
            m = m << 1u;
            ex = ex - 1u;
        }
        return s | (ex << 23u) | ((m & 0x3ffu) << 13u);
    }
    return s | ((e + 112u) << 23u) | (m << 13u);
}

// q + 1 when the dropped bits r (of `sh` bits) are over half, or exactly half and q is odd.
fn round_even(q: u32, r: u32, sh: u32) -> u32 {
    let half = 1u << (sh - 1u);
    if (r > half || (r == half && (q & 1u) == 1u)) {
        return q + 1u;
    }
    return q;
}

// f32 bits -> f16 bits, round to nearest even; too large -> inf (as numpy's astype(float16)).
fn f32_to_f16_bits(f: u32) -> u32 {
    let s = (f >> 16u) & 0x8000u;
    let e = (f >> 23u) & 0xffu;
    let m = f & 0x7fffffu;
    if (e == 0xffu) {
        if (m == 0u) {
            return s | 0x7c00u;
        }
        return s | 0x7c00u | max(m >> 13u, 1u);  // a NaN keeps its top payload bits, and stays a NaN
    }
    if (e >= 143u) {  // |x| >= 2^16: past the largest f16 (65504) even after rounding
        return s | 0x7c00u;
    }
    if (e >= 113u) {  // a normal f16; a carry out of the mantissa moves to the exponent (or to inf)
        return s | (((e - 112u) << 10u) + round_even(m >> 13u, m & 0x1fffu, 13u));
    }
    if (e < 102u) {  // below half the smallest subnormal (2^-25): zero
        return s;
    }
    // a subnormal f16: the 24-bit significand times 2^(e - 126), in units of 2^-24
    let full = m | 0x800000u;
    let sh = 126u - e;  // 14 .. 24
    return s | round_even(full >> sh, full & ((1u << sh) - 1u), sh);
}

// f32 bits -> bf16 bits, round to nearest even (weights.f32_to_bf16, torch's .bfloat16()).
fn f32_to_bf16_bits(f: u32) -> u32 {
    if ((f & 0x7f800000u) == 0x7f800000u && (f & 0x7fffffu) != 0u) {
        return 0x7fc0u;
    }
    return (f + 0x7fffu + ((f >> 16u) & 1u)) >> 16u;
}

// Element j of the source as f32 bits.
fn load_bits(j: u32) -> u32 {
    if (SRC_KIND == 0u) {
        return src[j];
    }
    let h = (src[j >> 1u] >> ((j & 1u) * 16u)) & 0xffffu;
    if (SRC_KIND == 2u) {
        return h << 16u;
    }
    return f16_to_f32_bits(h);
}

fn store_half(bits: u32) -> u32 {
    if (DST_KIND == 2u) {
        return f32_to_bf16_bits(bits);
    }
    return f32_to_f16_bits(bits);
}

@compute @workgroup_size(256)
fn convert(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
           @builtin(local_invocation_id) lid: vec3u) {
    let w = flat_index(wid, nwg, lid);
    if (DST_KIND == 0u) {
        if (w >= p.n) { return; }
        dst[p.out_offset + w] = load_bits(w);
        return;
    }
    let j = 2u * w;
    if (j >= p.n) { return; }
    var word = store_half(load_bits(j));
    if (j + 1u < p.n) {
        word = word | (store_half(load_bits(j + 1u)) << 16u);
    }
    dst[p.out_offset + w] = word;
}

@compute @workgroup_size(256)
fn place(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
         @builtin(local_invocation_id) lid: vec3u) {
    let w = flat_index(wid, nwg, lid);
    if (SRC_KIND == 0u) {
        if (w >= p.n) { return; }
        dst[p.out_offset + w] = src[w];
        return;
    }
    let first = p.out_offset;
    let w0 = first / 2u;
    if (w >= (first + p.n + 1u) / 2u - w0) { return; }
    let dw = w0 + w;
    var word = dst[dw];
    for (var h = 0u; h < 2u; h++) {
        let e = 2u * dw + h;
        if (e >= first && e < first + p.n) {
            let j = e - first;
            let half = (src[j >> 1u] >> ((j & 1u) * 16u)) & 0xffffu;
            word = (word & ~(0xffffu << (16u * h))) | (half << (16u * h));
        }
    }
    dst[dw] = word;
}
