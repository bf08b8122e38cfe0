// include/grid.wgsl: where a workgroup of a folded 1-D grid is. The host (Context.grid) folds G
// workgroups into (x, y) = (min(G, 65535), ceil(G / 65535)), the largest count WebGPU allows per
// dimension; a flat kernel (one element per invocation, WG of them per workgroup) reads its element
// with flat_index and returns when it is past the end. Included by elementwise.wgsl, norm.wgsl,
// convert.wgsl, lora.wgsl.

const WG: u32 = 256u;  // invocations per workgroup of a flat kernel (ops/common.py WG)

fn flat_group(wid: vec3u, nwg: vec3u) -> u32 {
    return wid.x + wid.y * nwg.x;
}

fn flat_index(wid: vec3u, nwg: vec3u, lid: vec3u) -> u32 {
    return flat_group(wid, nwg) * WG + lid.x;
}
