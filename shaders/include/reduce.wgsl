// include/reduce.wgsl: workgroup-wide sums for the norms (norm.wgsl): two f32 sums at once, every
// invocation of the workgroup getting the totals. Called from uniform control flow only.
//
// With SUBGROUPS (the adapter's subgroups feature) each subgroup adds its lanes with subgroupAdd,
// its first lane leaves the sum in workgroup memory and one barrier later every invocation adds
// the few subgroup sums; subgroups are taken to be consecutive ranges of local_invocation_index,
// as ONNX Runtime Web's kernels take them. The entry point sets sg_lane and sg_size from its
// builtins first (`#if SUBGROUPS`). Without subgroups: a tree through workgroup memory, log2(n)
// barriers.

var<workgroup> red: array<vec2<f32>, 256>;
var<private> sg_lane: u32;
var<private> sg_size: u32;

// The sum of v over the first n invocations of the workgroup (n = its size, a power of two <= 256).
fn sum2(v: vec2<f32>, lid: u32, n: u32) -> vec2<f32> {
#if SUBGROUPS
    let s = subgroupAdd(v);
    if (sg_lane == 0u) {
        red[lid / sg_size] = s;
    }
    workgroupBarrier();
    var total = vec2<f32>(0.0);
    for (var i = 0u; i < (n + sg_size - 1u) / sg_size; i++) {
        total += red[i];
    }
    workgroupBarrier();  // red is reused by the next sum
    return total;
#else
    red[lid] = v;
    workgroupBarrier();
    for (var s = n / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();  // red is reused by the next sum
    return total;
#endif
}
