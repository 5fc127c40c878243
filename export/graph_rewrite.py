"""The walk shared by the ONNX graph rewrites (transposed_convs.py, small_convs.py): each node of one op
type with a constant weight (and bias) is offered to a function that returns its replacement, or None to
keep it; the weights nothing reads any more are dropped."""

from __future__ import annotations

from collections.abc import Callable

from .runtime import import_onnx


def node_attributes(node) -> dict:
    """{name: value} of an ONNX node's attributes."""
    onnx = import_onnx()
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def conv_geometry(node, weight_shape) -> dict | None:
    """Kernel, stride and pads (top, left, bottom, right) of a 2-D Conv / ConvTranspose node with group 1,
    dilation 1 and explicit pads (what the rewrites cover), else None."""
    attrs = node_attributes(node)
    if len(weight_shape) != 4 or attrs.get("group", 1) != 1:
        return None
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        return None
    return {
        "kernel": tuple(weight_shape[2:]),
        "stride": tuple(attrs.get("strides", [1, 1])),
        "pads": tuple(attrs.get("pads", [0, 0, 0, 0])),
    }


def spatial_sizes(model) -> dict[str, tuple[int, int]]:
    """(H, W) of every 4-D value whose spatial sizes are static (ONNX shape inference)."""
    inferred = import_onnx().shape_inference.infer_shapes(model)
    sizes = {}
    for value in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
            sizes[value.name] = (dims[2].dim_value, dims[3].dim_value)
    return sizes


# (node, weight, bias or None, spatial sizes of the graph's values) -> (nodes, initializers) or None
Rewrite = Callable[..., tuple[list, list] | None]


def rewrite_weighted_nodes(model, op_type: str, rewrite: Rewrite):
    """A copy of ``model`` with each ``op_type`` node whose weight (input 1) and bias (input 2, if any) are
    initializers replaced by what ``rewrite`` returns for it (numpy weight and bias); None keeps the node.
    Shape inference runs once, at the first such node."""
    onnx = import_onnx()
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {init.name: init for init in graph.initializer}
    sizes = None
    nodes, rewritten = [], False
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == op_type else None
        bias_name = node.input[2] if weight is not None and len(node.input) > 2 else ""
        if weight is None or (bias_name and bias_name not in inits):  # a computed bias: left alone
            nodes.append(node)
            continue
        if sizes is None:
            sizes = spatial_sizes(model)
        bias = numpy_helper.to_array(inits[bias_name]) if bias_name else None
        replacement = rewrite(node, numpy_helper.to_array(weight), bias, sizes)
        if replacement is None:
            nodes.append(node)
            continue
        new_nodes, new_inits = replacement
        nodes += new_nodes
        graph.initializer.extend(new_inits)
        rewritten = True
    if not rewritten:
        return out
    del graph.node[:]
    graph.node.extend(nodes)
    # Drop the replaced nodes' weights where nothing else reads them (a generator's weight is also read by
    # the adjoint Conv of the step graph).
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return out
