// lora.wgsl: a LoRA fused into a weight on the GPU, in the weight's own buffer:
//   W (O, K) += scale * up (O, r) . down (r, K)      (a conv weight (O, C, kh, kw) is (O, C kh kw))
// Host: py/sdweb/backends/webgpu/ops/lora.py; reference: backends/numpy.py `fuse_lora` (W in f32
// plus the f32 product, rounded once to the held dtype).
//
//   entry      uniform (in order)     bindings 1..
//   fuse_lora  n, K, r, scale         up (O, r) f32; down (r, K) f32; w: the weight's n = O K
//                                     elements as u32 words (read_write): f32 bits, or two 16-bit
//                                     halves per word (element 2k in the low half)
//   @workgroup_size(256), one word of W per invocation: n words for W_KIND f32, ceil(n / 2) for a
//   16-bit W (both of its elements are updated, so no two invocations write one word). A 1-D grid
//   of G = ceil(words / 256) workgroups folded into (x, y) (include/grid.wgsl).
//
// Each element is the r-term dot product of its row of up and its column of down, in f32 (the
// rank is small: 4 to 128), added to the element read as f32 and stored back rounded to nearest
// even with integer ops (include/half.wgsl), as the host rounds.
//
// Constants: W_KIND = 0 (f32) | 1 (f16) | 2 (bf16), the weight's held dtype.
// @defaults W_KIND=0

#include "include/grid.wgsl"
#include "include/half.wgsl"

const KIND: u32 = W_KIND;

struct Params { n: u32, K: u32, r: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> up: array<f32>;
@group(0) @binding(2) var<storage, read> down: array<f32>;
@group(0) @binding(3) var<storage, read_write> w: array<u32>;

// W[e] + scale * (up . down)[e] as f32, e = o K + k
fn fused(e: u32, old: f32) -> f32 {
    let o = e / p.K;
    let k = e - o * p.K;
    var acc = 0.0;
    for (var j = 0u; j < p.r; j = j + 1u) {
        acc = acc + up[o * p.r + j] * down[j * p.K + k];
    }
    return old + p.scale * acc;
}

fn half_to_f32(h: u32) -> f32 {
    if (KIND == 2u) {
        return bitcast<f32>(bf16_to_f32_bits(h));
    }
    return bitcast<f32>(f16_to_f32_bits(h));
}

fn f32_to_half(x: f32) -> u32 {
    if (KIND == 2u) {
        return f32_to_bf16_bits(bitcast<u32>(x));
    }
    return f32_to_f16_bits(bitcast<u32>(x));
}

@compute @workgroup_size(256)
fn fuse_lora(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
             @builtin(local_invocation_id) lid: vec3u) {
    let i = flat_index(wid, nwg, lid);
    if (KIND == 0u) {
        if (i >= p.n) { return; }
        w[i] = bitcast<u32>(fused(i, bitcast<f32>(w[i])));
        return;
    }
    let e = 2u * i;
    if (e >= p.n) { return; }
    let word = w[i];
    var out = f32_to_half(fused(e, half_to_f32(word & 0xffffu)));
    if (e + 1u < p.n) {
        out = out | (f32_to_half(fused(e + 1u, half_to_f32(word >> 16u))) << 16u);
    }
    w[i] = out;
}
