"""Conv nodes with a small output rewritten as one GEMM over the batch (im2col), which onnxruntime's CPU
provider runs faster.

onnxruntime runs a Conv in its blocked NCHWc layout at 160-180 GFLOP/s on one thread for the course
layers with a 7 x 7 to 31 x 31 output, but at about 95 GFLOP/s where the output has 3 x 3 or 4 x 4 pixels
(the generator's 512 -> 256 layer's input-gradient, a stride-2 Conv on 7 x 7; the classifier's 128 -> 256
k4 s3 Conv on 14 x 14): too few pixels per image to fill its kernels. There, the taps are gathered by
strided Slices of the NHWC input (one per kernel tap, each [N, Ho, Wo, C_in]), concatenated along the
channels, and multiplied once: ``[N*Ho*Wo, kh*kw*C_in] @ [kh*kw*C_in, C_out]``. The same sums in another
order, so equal up to fp32 rounding (tests/test_export_small_convs.py against the Conv; the parity gate
on every export).

``rewrite_small_convs`` applies it to the Conv nodes with a constant weight (and bias), 2-D, group 1,
dilation 1, explicit pads, static spatial sizes and 2 to ``max_out_pixels`` output pixels.
"""

from __future__ import annotations

import numpy as np

from .graph_rewrite import conv_geometry, rewrite_weighted_nodes
from .runtime import import_onnx

# Rewritten where the output has at most this many pixels (module docstring; docs/NOTES.md, ONNX).
MAX_OUT_PIXELS = 16


def _gemm_nodes(node, geometry: dict, weight, bias, out_hw, helper, numpy_helper):
    """(nodes, initializers) that compute ``node`` as Transpose, Slices, Concat, MatMul (+ Add), Transpose."""
    c_out, c_in, kh, kw = weight.shape
    (sh, sw), (top, left, bottom, right) = geometry["stride"], geometry["pads"]
    ho, wo = out_hw
    base = f"{node.name or node.output[0]}_gemm"
    # [kh*kw*C_in, C_out]: row (ky, kx, c) holds the tap (ky, kx) of input channel c, as the Concat orders them.
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(weight.transpose(2, 3, 1, 0).reshape(-1, c_out)), f"{base}_weight"),
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), f"{base}_axes"),
        numpy_helper.from_array(np.array([sh, sw], dtype=np.int64), f"{base}_steps"),
    ]  # fmt: skip
    nodes = [
        helper.make_node(
            "Transpose", [node.input[0]], [f"{base}_nhwc"], name=f"{base}_nhwc", perm=[0, 2, 3, 1]
        )
    ]
    source = f"{base}_nhwc"  # [N, H, W, C_in]
    if any(geometry["pads"]):
        pads = np.array([0, top, left, 0, 0, bottom, right, 0], dtype=np.int64)
        inits.append(numpy_helper.from_array(pads, f"{base}_pads"))
        nodes.append(
            helper.make_node("Pad", [source, inits[-1].name], [f"{base}_padded"], name=f"{base}_pad")
        )
        source = f"{base}_padded"
    taps = []
    for ky in range(kh):
        for kx in range(kw):
            tap = f"{base}_tap{ky}_{kx}"
            inits += [
                numpy_helper.from_array(np.array([ky, kx], dtype=np.int64), f"{tap}_starts"),
                numpy_helper.from_array(np.array([ky + sh * (ho - 1) + 1, kx + sw * (wo - 1) + 1], dtype=np.int64), f"{tap}_ends"),
            ]  # fmt: skip
            nodes.append(
                helper.make_node(
                    "Slice",
                    [source, f"{tap}_starts", f"{tap}_ends", inits[1].name, inits[2].name],
                    [tap],
                    name=tap,
                )
            )  # [N, Ho, Wo, C_in]
            taps.append(tap)
    nodes += [
        helper.make_node("Concat", taps, [f"{base}_columns"], name=f"{base}_columns", axis=3),
        helper.make_node(
            "MatMul", [f"{base}_columns", inits[0].name], [f"{base}_product"], name=f"{base}_matmul"
        ),
    ]  # [N, Ho, Wo, kh*kw*C_in] -> [N, Ho, Wo, C_out]
    product = f"{base}_product"
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, f"{base}_bias"))
        nodes.append(
            helper.make_node("Add", [product, inits[-1].name], [f"{base}_biased"], name=f"{base}_bias")
        )
        product = f"{base}_biased"
    nodes.append(
        helper.make_node("Transpose", [product], list(node.output), name=f"{base}_nchw", perm=[0, 3, 1, 2])
    )
    return nodes, inits


def rewrite_small_convs(model, max_out_pixels: int = MAX_OUT_PIXELS):
    """A copy of ``model`` (onnx.ModelProto) with its Conv nodes of at most ``max_out_pixels`` output pixels
    as one GEMM over the batch (module docstring)."""
    import_onnx()  # an ExportError naming the extra, where onnx is missing
    from onnx import helper, numpy_helper

    def rewrite(node, w, bias, sizes):
        geometry = conv_geometry(node, w.shape)
        out_hw = sizes.get(node.output[0])
        # A 1x1 output (a kernel over the whole input) stays a Conv: its taps are the whole input, and the
        # Slices cost more than the GEMM saves (measured on the course step).
        if geometry is None or out_hw is None or not 1 < out_hw[0] * out_hw[1] <= max_out_pixels:
            return None
        return _gemm_nodes(node, geometry, w, bias, out_hw, helper, numpy_helper)

    return rewrite_weighted_nodes(model, "Conv", rewrite)
