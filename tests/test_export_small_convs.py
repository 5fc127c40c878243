"""Conv nodes with a small output rewritten as one GEMM over the batch (export/small_convs.py): the same
outputs in onnxruntime as the Conv for every geometry the rewrite takes, and the others left alone."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from exportkit import weight_initializers

from zsteer.export.runtime import Placement, make_session
from zsteer.export.small_convs import MAX_OUT_PIXELS, rewrite_small_convs

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402 (after the skip)


def _model(c_in, c_out, kernel, stride, pads, bias, size, group=1):
    """x [N, c_in, *size] -> Conv -> y."""
    inits, inputs = weight_initializers((c_out, c_in // group, *kernel), c_out if bias else None)
    node = helper.make_node(
        "Conv", inputs, ["y"], name="conv", kernel_shape=list(kernel), strides=list(stride), pads=list(pads),
        group=group,
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in, *size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c_out, "H", "W"])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, x):
    onnx.checker.check_model(model)
    return make_session(model.SerializeToString(), Placement(), threads=1).run(None, {"x": x})[0]


def _out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


@pytest.mark.parametrize("size", [(7, 7), (5, 8), (9, 6)])
def test_rewrite_matches_conv(size):
    """Kernels 1-4, strides 1-3, pads 0-1, with and without bias, on odd and non-square inputs (the
    course's k3 s2 on 7 x 7 and k4 s3 among them): every output of 2 to MAX_OUT_PIXELS pixels is a GEMM."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, *size)).astype(np.float32)
    taken = 0
    for k, s, p, bias in itertools.product((1, 2, 3, 4), (1, 2, 3), (0, 1), (0, 1)):
        out = (_out(size[0], k, s, p), _out(size[1], k, s, p))
        if min(out) < 1 or p >= k:
            continue
        model = _model(5, 6, (k, k), (s, s), (p,) * 4, bias, size)
        rewritten = rewrite_small_convs(model)
        ops = {n.op_type for n in rewritten.graph.node}
        assert ("Conv" in ops) == (not 1 < out[0] * out[1] <= MAX_OUT_PIXELS), (k, s, p)
        taken += "Conv" not in ops
        want, got = _run(model, x), _run(rewritten, x)
        assert got.shape == want.shape, (k, s, p)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str((k, s, p, bias)))
    assert taken >= 5


def test_unequal_kernels_strides_and_pads():
    x = np.random.default_rng(2).standard_normal((2, 4, 9, 7)).astype(np.float32)
    model = _model(4, 3, (4, 3), (3, 2), (1, 0, 2, 1), bias=True, size=(9, 7))
    rewritten = rewrite_small_convs(model)
    assert "MatMul" in {n.op_type for n in rewritten.graph.node}
    np.testing.assert_allclose(_run(rewritten, x), _run(model, x), rtol=1e-5, atol=1e-5)


def test_grouped_dynamic_and_large_outputs_stay():
    for model in (
        _model(4, 4, (3, 3), (2, 2), (0,) * 4, bias=False, size=(7, 7), group=2),
        _model(4, 4, (3, 3), (2, 2), (0,) * 4, bias=False, size=("H", "W")),
        _model(4, 4, (3, 3), (1, 1), (1,) * 4, bias=False, size=(7, 7)),
        _model(4, 4, (3, 3), (1, 1), (0,) * 4, bias=False, size=(3, 3)),  # a 1x1 output
    ):
        assert [n.op_type for n in rewrite_small_convs(model).graph.node] == ["Conv"]


def test_rewritten_rows_do_not_depend_on_their_neighbours():
    """A row gets the same bits in a batch of 2 as in a batch of 9, as with the Conv."""
    model = rewrite_small_convs(_model(8, 16, (3, 3), (2, 2), (0,) * 4, True, (7, 7)))
    x = np.random.default_rng(5).standard_normal((9, 8, 7, 7)).astype(np.float32)
    assert np.array_equal(_run(model, x)[:2], _run(model, x[:2].copy()))
