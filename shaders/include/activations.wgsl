// include/activations.wgsl: the activations kernels fuse into their epilogues, one definition each,
// and the one spelling of the choice. Included by matmul.wgsl, conv2d.wgsl and norm.wgsl (shaders.py
// `#include`). Reference: backends/numpy.py `_silu`, `_gelu`, `_quick_gelu`, `_relu`, `_geglu`; host
// side: the ACT codes
// of py/sdweb/backends/webgpu/ops/common.py.
//
// Host constant ACT (the pipeline cache key): 0u none, 1u silu, 2u gelu (exact, erf), 3u quick_gelu,
// 4u geglu, 5u relu. geglu (value * gelu(gate)) needs two inputs, so only a GEMM epilogue offers it;
// `activate` applies the one-input ones.
// @defaults ACT=0u

const ACT_KIND: u32 = ACT;
const ACT_SILU: u32 = 1u;
const ACT_GELU: u32 = 2u;
const ACT_QUICK_GELU: u32 = 3u;
const ACT_GEGLU: u32 = 4u;
const ACT_RELU: u32 = 5u;

// x * sigmoid(x). exp's argument is capped, so a very negative v gives v / huge (about -0): an
// uncapped exp would overflow, and WGSL lets an implementation assume values are finite, so v / inf
// is not guaranteed to be -0.
fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(min(-v, 80.0)));
}

// x * sigmoid(1.702 x), CLIP's activation; exp capped as in silu.
fn quick_gelu(v: f32) -> f32 {
    return v / (1.0 + exp(min(-1.702 * v, 80.0)));
}

// GELU(v) = v Phi(v) = max(v, 0) - |v| Phi(-|v|), Phi(-z) = erfc(z / sqrt 2) / 2 by Abramowitz &
// Stegun 7.1.26 (error <= 1.5e-7, so GELU's is <= 1e-7 |v|), coefficients pre-halved. exp's argument
// is never positive, so it can only underflow to 0, which gives the limits (0 and v) for large |v|.
fn gelu(v: f32) -> f32 {
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.23164189 * a);  // 0.3275911 / sqrt(2)
    let poly = t * (0.127414796 + t * (-0.142248368 + t * (0.7107068705 + t * (-0.7265760135
               + t * 0.5307027145))));
    return max(v, 0.0) - a * poly * exp(-0.5 * a * a);
}

// diffusers' GEGLU on one output: the value half times gelu of the gate half.
fn geglu(value: f32, gate: f32) -> f32 {
    return value * gelu(gate);
}

// ACT (one-input kinds) applied to v; ACT = 0u returns v. ACT_KIND is a constant, so the compiler
// keeps only the chosen branch.
fn activate(v: f32) -> f32 {
    switch ACT_KIND {
        case ACT_SILU: { return silu(v); }
        case ACT_GELU: { return gelu(v); }
        case ACT_QUICK_GELU: { return quick_gelu(v); }
        case ACT_RELU: { return max(v, 0.0); }
        default: { return v; }
    }
}
