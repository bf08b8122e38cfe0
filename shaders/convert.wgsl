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
// Constants: SRC, DST = 0 (f32) | 1 (f16) | 2 (bf16), SRC != DST.
// @defaults SRC=0 DST=1
//
// Every conversion works on bit patterns with integer ops (include/half.wgsl): WGSL leaves the
// rounding of f32 -> f16 and the flushing of f16 subnormals to the implementation, and the held
// weights must equal the host path's bit for bit.

#include "include/grid.wgsl"
#include "include/half.wgsl"

const SRC_KIND: u32 = SRC;
const DST_KIND: u32 = DST;

struct Params { n: u32, out_offset: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

// Element j of the source as f32 bits.
fn load_bits(j: u32) -> u32 {
    if (SRC_KIND == 0u) {
        return src[j];
    }
    let h = (src[j >> 1u] >> ((j & 1u) * 16u)) & 0xffffu;
    if (SRC_KIND == 2u) {
        return bf16_to_f32_bits(h);
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
