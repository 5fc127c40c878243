"""ConvTranspose nodes rewritten as ops that onnxruntime's CPU provider runs faster.

onnxruntime's CPU ConvTranspose is a GEMM and a col2im per image, outside its blocked (NCHWc) convolution
path; in a profiled course ascent step it took about half of the step at roughly a third of the GFLOP/s
of its Conv (docs/NOTES.md, "ONNX: where the onnxruntime step loses to torch"). Three rewrites, all exact
up to fp32 rounding (the same sums in another order):

**A 1x1 input** (the generator's first layer, the classifier's last layer's adjoint) is a matrix product:
the output is the kernel weighted by the input's channels. A per-image GEMM of one column became one
GEMM over the batch: ``[N, C_in] @ [C_in, C_out*Ho*Wo]``, then a reshape and the bias.

**A small input** (at most ``MAX_GEMM_PIXELS`` pixels: the generator's 512 -> 256 layer on 3 x 3): one GEMM
of the batch's pixels, ``[N*H*W, C_in] @ [C_in, C_out*k*k]`` (the input in NHWC), then Col2Im adds the
taps into the image, instead of onnxruntime's GEMM of H*W = 9 columns per image.

**Few output channels** (the 64 -> 3 layers): the sub-pixel convolution. A stride-s transposed
convolution is s x s ordinary convolutions, one per output phase, on the same input (the phase
decomposition, or "sub-pixel convolution"):

    full[s*q + r] = sum_j x[q - j] * w[r + s*j]          (per axis; r = phase, j = tap of that phase)

So one stride-1 Conv with ``s*s*C_out`` output channels and a ``ceil(k/s)``-tap kernel (the phases' taps,
reversed, zero where a phase has fewer taps) on the input padded by ``ceil(k/s) - 1``, followed by
DepthToSpace (CRD: channel ``c*s*s + ry*s + rx`` goes to pixel ``(ry, rx)`` of channel ``c``) and a Slice
for the transposed convolution's padding and output padding, gives the same sums. Where ``s`` divides ``k``
no multiply is wasted; a k=3, s=2 layer multiplies 16 taps for 9.

The phases must then be interleaved into the image (DepthToSpace), and onnxruntime's DepthToSpace is slow:
6-8x a plain copy of the same tensor. So the rewrite pays only where the transposed convolution writes few
channels: measured on the course step graph, the two 64 -> 3 layers (the generator's last layer and the
classifier's input-gradient) each gave 3-4% of the step, every 64- to 256-channel layer lost 2-6%
(docs/NOTES.md). So only ConvTranspose nodes with at most ``MAX_OUT_CHANNELS`` output channels are rewritten this way.

``rewrite_transposed_convs`` applies them to the nodes with a constant weight (and bias) and a geometry
they cover (2-D, group 1, dilation 1, explicit pads, no output_shape; equal strides > 1 for the sub-pixel
form; static input sizes for the first two); the others stay as they are.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from zsteer.pipeline.phase_conv import phase_weight

from .graph_rewrite import conv_geometry, node_attributes, rewrite_weighted_nodes
from .runtime import import_onnx


def subpixel_weight(weight: np.ndarray, stride: int) -> np.ndarray:
    """ConvTranspose weight [C_in, C_out, kh, kw] -> Conv weight [C_out*s*s, C_in, Kh, Kw], K = ceil(k/s).

    The kernel zero-padded to a multiple of the stride, then the engine's own phase weight
    (pipeline/phase_conv.phase_weight: pixel_shuffle's channel order is DepthToSpace CRD's).
    """
    c_in, c_out, kh, kw = weight.shape
    padded = np.zeros(
        (c_in, c_out, stride * math.ceil(kh / stride), stride * math.ceil(kw / stride)), weight.dtype
    )
    padded[:, :, :kh, :kw] = weight
    return phase_weight(torch.from_numpy(padded), stride).numpy()


def _geometry(node, weight_shape) -> dict | None:
    """Kernel, stride, pads and output padding of a ConvTranspose the rewrites cover, else None: the
    geometry every rewrite covers (``conv_geometry``), no output_shape and no negative pads."""
    geometry = conv_geometry(node, weight_shape)
    attrs = node_attributes(node)
    if geometry is None or "output_shape" in attrs or any(p < 0 for p in geometry["pads"]):
        return None
    return geometry | {"out_pad": tuple(attrs.get("output_padding", [0, 0]))}


def _output_size(geometry: dict, in_hw: tuple[int, int]) -> tuple[int, int]:
    """ONNX's ConvTranspose output size: s*(H-1) + op + k - pad_begin - pad_end, per axis."""
    g = geometry
    return tuple(
        s * (h - 1) + op + k - pb - pe
        for h, s, op, k, pb, pe in zip(in_hw, g["stride"], g["out_pad"], g["kernel"], g["pads"][:2], g["pads"][2:], strict=True)
    )  # fmt: skip


def _plan(geometry: dict) -> dict | None:
    """The sub-pixel rewrite's geometry, or None where it does not apply."""
    kernel, stride, pads, out_pad = (geometry[k] for k in ("kernel", "stride", "pads", "out_pad"))
    # DepthToSpace has one block size; a stride-1 transposed conv has no phases to gain from.
    if stride[0] != stride[1] or stride[0] < 2:
        return None
    taps = tuple(math.ceil(k / s) for k, s in zip(kernel, stride, strict=True))
    # Rows the conv needs past the input's own K-1 of padding, so that its output covers the transposed
    # conv's crop: ceil((op + k - pad_end) / s) - K, whatever the input's size.
    extra = tuple(
        max(0, math.ceil((op + k - pe) / s) - big)
        for op, k, pe, s, big in zip(out_pad, kernel, pads[2:], stride, taps, strict=True)
    )
    return {**geometry, "stride": stride[0], "taps": taps, "extra": extra}


def _subpixel_nodes(node, plan: dict, weight: np.ndarray, bias: np.ndarray | None, helper, numpy_helper):
    """(nodes, initializers) that compute ``node``'s output as Conv -> DepthToSpace -> Slice."""
    s, (big_h, big_w), (ey, ex) = plan["stride"], plan["taps"], plan["extra"]
    top, left, bottom, right = plan["pads"]
    (opy, opx), (kh, kw) = plan["out_pad"], plan["kernel"]
    base = f"{node.name or node.output[0]}_subpixel"
    inits = [numpy_helper.from_array(subpixel_weight(weight, s), f"{base}_weight")]
    conv_inputs = [node.input[0], inits[0].name]
    if bias is not None:  # every phase of output channel c gets c's bias
        inits.append(numpy_helper.from_array(np.repeat(bias, s * s), f"{base}_bias"))
        conv_inputs.append(inits[1].name)
    # The full (uncropped) output is s * (H + K - 1 + extra) long; the transposed conv's output is its
    # [top, top + Ho) with Ho = s*(H-1) + op + k - top - bottom, which ends op + k - bottom - s*(K + extra)
    # (<= 0) from the full output's end.
    ends = [opy + kh - bottom - s * (big_h + ey), opx + kw - right - s * (big_w + ex)]
    ends = [e if e < 0 else np.iinfo(np.int64).max for e in ends]
    inits += [
        numpy_helper.from_array(np.array([top, left], dtype=np.int64), f"{base}_starts"),
        numpy_helper.from_array(np.array(ends, dtype=np.int64), f"{base}_ends"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), f"{base}_axes"),
    ]
    nodes = [
        helper.make_node(
            "Conv", conv_inputs, [f"{base}_phases"], name=f"{base}_conv", kernel_shape=[big_h, big_w],
            pads=[big_h - 1, big_w - 1, big_h - 1 + ey, big_w - 1 + ex], strides=[1, 1],
        ),  # [N, C_out*s*s, H + K - 1 + extra, W + K - 1 + extra]
        helper.make_node(
            "DepthToSpace", [f"{base}_phases"], [f"{base}_full"], name=f"{base}_interleave", blocksize=s,
            mode="CRD",
        ),  # [N, C_out, s*(H + K - 1 + extra), s*(W + K - 1 + extra)]
        helper.make_node(
            "Slice", [f"{base}_full", f"{base}_starts", f"{base}_ends", f"{base}_axes"], list(node.output),
            name=f"{base}_crop",
        ),
    ]  # fmt: skip
    return nodes, inits


def _matmul_nodes(node, geometry: dict, weight: np.ndarray, bias: np.ndarray | None, helper, numpy_helper):
    """(nodes, initializers) that compute a 1x1-input ``node`` as Reshape -> MatMul (-> Add) -> Reshape."""
    c_in, c_out = weight.shape[:2]
    top, left = geometry["pads"][:2]
    out_h, out_w = _output_size(geometry, (1, 1))
    # The output is the kernel from (top, left) on, zero where the output padding reaches past it.
    kernel = np.zeros((c_in, c_out, out_h, out_w), dtype=weight.dtype)
    part = weight[:, :, top : top + out_h, left : left + out_w]
    kernel[:, :, : part.shape[2], : part.shape[3]] = part
    base = f"{node.name or node.output[0]}_matmul"
    inits = [
        numpy_helper.from_array(kernel.reshape(c_in, -1), f"{base}_weight"),  # [C_in, C_out*Ho*Wo]
        numpy_helper.from_array(np.array([-1, c_in], dtype=np.int64), f"{base}_rows"),
        numpy_helper.from_array(np.array([-1, c_out, out_h, out_w], dtype=np.int64), f"{base}_image"),
    ]
    nodes = [
        helper.make_node("Reshape", [node.input[0], inits[1].name], [f"{base}_x"], name=f"{base}_rows"),
        helper.make_node("MatMul", [f"{base}_x", inits[0].name], [f"{base}_y"], name=f"{base}_gemm"),
    ]
    flat = f"{base}_y"
    if bias is not None:
        inits.append(numpy_helper.from_array(np.repeat(bias, out_h * out_w), f"{base}_bias"))
        nodes.append(helper.make_node("Add", [flat, inits[-1].name], [f"{base}_biased"], name=f"{base}_bias"))
        flat = f"{base}_biased"
    nodes.append(helper.make_node("Reshape", [flat, inits[2].name], list(node.output), name=f"{base}_image"))
    return nodes, inits


def _col2im_nodes(
    node,
    geometry: dict,
    weight: np.ndarray,
    bias: np.ndarray | None,
    in_hw: tuple[int, int],
    helper,
    numpy_helper,
):
    """(nodes, initializers) that compute a small-input ``node`` as one GEMM over the batch and a Col2Im.

    onnxruntime's ConvTranspose runs one GEMM per image, ``[C_out*k*k, C_in] @ [C_in, H*W]``, which on a
    3x3 input has 9 columns; here the batch's pixels are the rows of one GEMM (the input in NHWC),
    ``[N*H*W, C_in] @ [C_in, C_out*k*k]``, and Col2Im adds the taps into the image.
    """
    c_in, c_out, kh, kw = weight.shape
    (sh, sw), (top, left, bottom, right) = geometry["stride"], geometry["pads"]
    out_h, out_w = _output_size(geometry, in_hw)
    # Col2Im's own pads crop the image's borders; an output padding past the bottom/right padding is zero
    # rows/columns added at the end.
    end_h, end_w = bottom - geometry["out_pad"][0], right - geometry["out_pad"][1]
    base = f"{node.name or node.output[0]}_col2im"
    inits = [
        numpy_helper.from_array(weight.reshape(c_in, -1), f"{base}_weight"),  # [C_in, C_out*kh*kw]
        numpy_helper.from_array(
            np.array([-1, in_hw[0] * in_hw[1], c_in], dtype=np.int64), f"{base}_pixels_shape"
        ),
        numpy_helper.from_array(
            np.array([out_h + min(end_h, 0), out_w + min(end_w, 0)], dtype=np.int64), f"{base}_image_shape"
        ),
        numpy_helper.from_array(np.array([kh, kw], dtype=np.int64), f"{base}_block_shape"),
    ]
    nodes = [
        helper.make_node("Transpose", [node.input[0]], [f"{base}_nhwc"], name=f"{base}_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", [f"{base}_nhwc", inits[1].name], [f"{base}_pixels"], name=f"{base}_pixels"),
        helper.make_node("MatMul", [f"{base}_pixels", inits[0].name], [f"{base}_taps"], name=f"{base}_gemm"),
        # [N, H*W, C_out*kh*kw]
        helper.make_node("Transpose", [f"{base}_taps"], [f"{base}_columns"], name=f"{base}_columns", perm=[0, 2, 1]),
        helper.make_node(
            "Col2Im", [f"{base}_columns", inits[2].name, inits[3].name], [f"{base}_fold"], name=f"{base}_fold",
            strides=[sh, sw], pads=[top, left, max(end_h, 0), max(end_w, 0)],
        ),  # [N, C_out, Ho, Wo] (less the output padding past the end padding)
    ]  # fmt: skip
    # The fold, then the zero rows/columns of an output padding past the end padding, then the bias: the
    # last of them writes the node's output.
    steps = []
    if min(end_h, end_w) < 0:
        pads = [0, 0, 0, 0, 0, 0, -min(end_h, 0), -min(end_w, 0)]
        inits.append(numpy_helper.from_array(np.array(pads, dtype=np.int64), f"{base}_pads"))
        steps.append(("Pad", inits[-1].name, "pad"))
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.reshape(-1, 1, 1), f"{base}_bias"))
        steps.append(("Add", inits[-1].name, "bias"))
    names = [f"{base}_fold"] + [f"{base}_{step}" for _, _, step in steps]
    names[-1] = node.output[0]
    nodes[-1].output[0] = names[0]
    for (op, operand, step), src, dst in zip(steps, names[:-1], names[1:], strict=True):
        nodes.append(helper.make_node(op, [src, operand], [dst], name=f"{base}_{step}"))
    return nodes, inits


# One GEMM over the batch and a Col2Im for inputs of at most this many pixels: measured on the course step
# (docs/NOTES.md, ONNX), the 512 -> 256 layer on a 3 x 3 input gained; the 4 x 4 and 7 x 7 inputs did not.
MAX_GEMM_PIXELS = 9

# Sub-pixel convolutions only for transposed convolutions with at most this many output channels (module
# docstring: onnxruntime's DepthToSpace makes the rewrite lose on wide layers).
MAX_OUT_CHANNELS = 8


def rewrite_transposed_convs(
    model,
    max_out_channels: int = MAX_OUT_CHANNELS,
    max_gemm_pixels: int = MAX_GEMM_PIXELS,
):
    """A copy of ``model`` (onnx.ModelProto) with its ConvTranspose nodes that have a 1x1 input as a MatMul,
    those on at most ``max_gemm_pixels`` input pixels as a batch-wide GEMM + Col2Im, and those with at most
    ``max_out_channels`` outputs as Conv + DepthToSpace + Slice (module docstring)."""
    import_onnx()  # an ExportError naming the extra, where onnx is missing
    from onnx import helper, numpy_helper

    def rewrite(node, w, bias, sizes):
        geometry = _geometry(node, w.shape)
        if geometry is None:
            return None
        in_hw, plan = sizes.get(node.input[0]), _plan(geometry)
        if in_hw == (1, 1) and min(_output_size(geometry, (1, 1))) > 0:
            return _matmul_nodes(node, geometry, w, bias, helper, numpy_helper)
        if in_hw is not None and math.prod(in_hw) <= max_gemm_pixels:
            return _col2im_nodes(node, geometry, w, bias, in_hw, helper, numpy_helper)
        if plan is not None and w.shape[1] <= max_out_channels:
            return _subpixel_nodes(node, plan, w, bias, helper, numpy_helper)
        return None

    return rewrite_weighted_nodes(model, "ConvTranspose", rewrite)
