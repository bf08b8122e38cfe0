"""The WebGPU ops, one module per op family and named as its shader (onnxruntime-web style): each
function validates its inputs, picks the shader entry and constants, packs the uniform and sizes the
dispatch, then calls `ctx.run` (device.py's context API).

    common.py       shared checks and helpers
    elementwise.py  shaders/elementwise.wgsl: add/mul, layout ops, gathers
    norm.py         shaders/norm.wgsl: group norm, layer norm
    matmul.py       shaders/matmul.wgsl: linear (+bias, fused activation)
    conv2d.py       shaders/conv2d.wgsl: conv2d as implicit GEMM (+bias, residual)
    attention.py    shaders/attention.wgsl: fused flash attention
    convert.py      shaders/convert.wgsl: weight dtype conversion (upload.py)
    lora.py         shaders/lora.wgsl: a LoRA fused into a weight in place (fuse_lora)
"""
