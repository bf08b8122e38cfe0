"""WebGPU op modules, one per op family (onnxruntime-web style): each function validates its inputs,
picks the shader entry and constants, packs the uniform and sizes the dispatch, then calls
`ctx.run` (see backends/webgpu.py for the context API).

    common.py       shared checks and helpers
    elementwise.py  shaders/elementwise.wgsl: activations, add/mul, layout ops, gathers
    norm.py         shaders/norm.wgsl: group norm (+SiLU), layer norm, softmax
    matmul.py       shaders/matmul.wgsl: linear (+bias, fused activation)
    conv2d.py       shaders/conv2d.wgsl: conv2d as implicit GEMM
    attention.py    shaders/attention.wgsl: fused flash attention
"""

from . import elementwise, norm  # noqa: F401
