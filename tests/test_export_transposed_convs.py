"""Transposed convolutions rewritten as sub-pixel convolutions (export/transposed_convs.py): same outputs in
onnxruntime for every geometry the rewrite takes, and the nodes it must leave alone left alone."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from exportkit import weight_initializers

from zsteer.export.runtime import Placement, make_session
from zsteer.export.transposed_convs import rewrite_transposed_convs

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402 (after the skip)


def _model(c_in, c_out, kernel, stride, pads, out_pad, bias, size, group=1, share_weight=False):
    """x [N, c_in, *size] -> ConvTranspose -> y (plus, with share_weight, a Conv reading the same weight)."""
    inits, inputs = weight_initializers((c_in, c_out // group, *kernel), c_out if bias else None)
    nodes = [
        helper.make_node(
            "ConvTranspose", inputs, ["y"], name="ct", kernel_shape=list(kernel), strides=list(stride),
            pads=list(pads), output_padding=list(out_pad), group=group,
        )
    ]  # fmt: skip
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c_out, "H", "W"])]
    if share_weight:  # the step graph's adjoint reads the generator's weight too
        nodes.append(helper.make_node("Conv", ["y", "W"], ["y2"], name="adjoint", strides=list(stride)))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", c_in, "H2", "W2"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in, *size])],
        outputs, inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, x):
    onnx.checker.check_model(model)
    return make_session(model.SerializeToString(), Placement(), threads=1).run(None, {"x": x})


GEOMETRIES = [
    (kernel, stride, pad, out_pad, bias)
    for kernel, stride, pad, out_pad, bias in itertools.product((1, 2, 3, 4, 5), (2, 3), (0, 1, 2), (0, 1, 2), (0, 1))
    if out_pad < stride and pad < kernel and (out_pad + kernel - 2 * pad) > 0
]  # fmt: skip


@pytest.mark.parametrize("size", [(1, 1), (4, 6), (7, 5)])
def test_rewrite_matches_conv_transpose(size):
    """Every kernel 1-5, stride 2-3, padding and output padding the ONNX op allows, with and without bias,
    on square and non-square inputs (the course's 3x3 and 4x4 kernels at strides 2 and 3 among them); a
    1x1 input takes the MatMul form, the others the sub-pixel form."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, *size)).astype(np.float32)
    for kernel, stride, pad, out_pad, bias in GEOMETRIES:
        model = _model(4, 3, (kernel, kernel), (stride, stride), (pad,) * 4, (out_pad, out_pad), bias, size)
        rewritten = rewrite_transposed_convs(model)
        ops = {n.op_type for n in rewritten.graph.node}
        assert "ConvTranspose" not in ops and ("MatMul" in ops) == (size == (1, 1))
        (want,), (got,) = _run(model, x), _run(rewritten, x)
        assert got.shape == want.shape, (kernel, stride, pad, out_pad)
        np.testing.assert_allclose(
            got, want, rtol=1e-5, atol=1e-5, err_msg=str((kernel, stride, pad, out_pad))
        )


@pytest.mark.parametrize("size", [(2, 3), (3, 3), (3, 2)])
def test_small_inputs_take_one_gemm_and_col2im(size):
    """A wide layer on an input of at most MAX_GEMM_PIXELS pixels becomes Transpose, MatMul, Transpose,
    Col2Im (+ Pad, + Add): the same outputs as the ConvTranspose for every geometry of the test above, odd
    and non-square sizes, and an output padding past the end padding (the Pad)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 5, *size)).astype(np.float32)
    for kernel, stride, pad, out_pad, bias in GEOMETRIES:
        model = _model(5, 12, (kernel, kernel), (stride, stride), (pad,) * 4, (out_pad, out_pad), bias, size)
        rewritten = rewrite_transposed_convs(model)
        ops = [n.op_type for n in rewritten.graph.node]
        assert "ConvTranspose" not in ops and "Col2Im" in ops and ("Pad" in ops) == (out_pad > pad)
        (want,), (got,) = _run(model, x), _run(rewritten, x)
        assert got.shape == want.shape, (kernel, stride, pad, out_pad)
        np.testing.assert_allclose(
            got, want, rtol=1e-5, atol=1e-5, err_msg=str((kernel, stride, pad, out_pad))
        )
    unequal = _model(5, 12, (4, 3), (3, 2), (1, 0, 2, 1), (2, 0), bias=True, size=size)
    (want,), (got,) = _run(unequal, x), _run(rewrite_transposed_convs(unequal), x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_unequal_pads_and_kernels():
    x = np.random.default_rng(2).standard_normal((2, 5, 6, 3)).astype(np.float32)
    model = _model(5, 2, (4, 3), (2, 2), (1, 0, 2, 1), (1, 0), bias=True, size=(6, 3))
    (want,), (got,) = _run(model, x), _run(rewrite_transposed_convs(model), x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_wide_layers_on_a_1x1_input_become_a_matmul():
    x = np.random.default_rng(4).standard_normal((3, 6, 1, 1)).astype(np.float32)
    model = _model(6, 16, (4, 4), (2, 2), (1, 0, 0, 1), (1, 1), bias=True, size=(1, 1))
    rewritten = rewrite_transposed_convs(model)
    assert "MatMul" in {n.op_type for n in rewritten.graph.node}
    (want,), (got,) = _run(model, x), _run(rewritten, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_wide_grouped_unequal_stride_and_dynamic_size_nodes_stay():
    """The sub-pixel form pays only for narrow outputs (its docstring): wide layers, groups and unequal
    strides are left as ConvTranspose, and so is a layer whose input size is not known to be 1x1."""
    for model in (
        _model(4, 16, (4, 4), (2, 2), (1,) * 4, (0, 0), bias=False, size=(5, 5)),
        _model(4, 4, (4, 4), (2, 2), (1,) * 4, (0, 0), bias=False, size=(5, 5), group=2),
        _model(4, 3, (4, 4), (2, 3), (1,) * 4, (0, 0), bias=False, size=(5, 5)),
        _model(4, 16, (4, 4), (2, 2), (1,) * 4, (0, 0), bias=False, size=("H", "W")),
    ):
        kept = rewrite_transposed_convs(model)
        assert [n.op_type for n in kept.graph.node] == ["ConvTranspose"]


def test_shared_weight_is_kept_for_its_other_reader():
    x = np.random.default_rng(3).standard_normal((2, 4, 5, 5)).astype(np.float32)
    model = _model(4, 3, (4, 4), (2, 2), (1,) * 4, (0, 0), bias=True, size=(5, 5), share_weight=True)
    rewritten = rewrite_transposed_convs(model)
    names = {init.name for init in rewritten.graph.initializer}
    assert "W" in names and "B" not in names
    for got, want in zip(_run(rewritten, x), _run(model, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rewritten_rows_do_not_depend_on_their_neighbours():
    """The MatMul, sub-pixel and GEMM + Col2Im forms give a row the same bits in a batch of 2 as in a batch of 9, as the
    ConvTranspose they replace does (the loop pads batches, never below 2 rows)."""
    rng = np.random.default_rng(5)
    for size, c_out in (((1, 1), 16), ((6, 6), 3), ((3, 3), 16)):
        model = rewrite_transposed_convs(_model(8, c_out, (4, 4), (2, 2), (1,) * 4, (1, 1), True, size))
        x = rng.standard_normal((9, 8, *size)).astype(np.float32)
        (big,), (small,) = _run(model, x), _run(model, x[:2].copy())
        assert np.array_equal(big[:2], small)
