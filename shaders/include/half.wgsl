// include/half.wgsl: 16-bit floats as bit patterns, converted to and from f32 with integer ops only.
// WGSL leaves the rounding of f32 -> f16 and the flushing of f16 subnormals to the implementation;
// these give what the host gives (py/sdweb/weights.py: numpy's float32 -> float16 and torch's
// float32 -> bfloat16, both round to nearest even; widening is exact), bit for bit. NaNs stay NaNs
// (bf16: the quiet NaN 0x7FC0, as torch makes it). Included by convert.wgsl and lora.wgsl.

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

// bf16 bits -> f32 bits: bf16 is the top half of an f32.
fn bf16_to_f32_bits(h: u32) -> u32 {
    return h << 16u;
}
