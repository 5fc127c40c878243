"""The Triton kernels compile for NVIDIA GPUs, down to cubin, on a machine without one.

Triton compiles ahead of time for a named target with the ptxas it ships, no driver needed. Each case
runs a wrapper with its kernel replaced by a recorder, so what is compiled is exactly what the wrapper
would launch: its argument types, its constexprs, and the specialisation Triton applies to integer
arguments equal to 1 (unit strides). This catches what the interpreter lets through (type or shape
mismatches in the IR, unsupported ops). Run by tests/test_kernels_triton.py in a process without
TRITON_INTERPRET (the interpreter replaces the compiler).
"""

from __future__ import annotations

import contextlib
import math
import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("Triton's interpreter is on: kernels are not compiled", allow_module_level=True)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from zsteer.core.status import ACTIVE  # noqa: E402
from zsteer.kernels import _triton_ascent_update, _triton_objective  # noqa: E402

POINTER_TYPES = {
    torch.float32: "*fp32",
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.int32: "*i32",
    torch.int64: "*i64",
}
OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion")


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records the call instead of launching."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((grid, args, kwargs))


def _compile_recorded(kernel, call, arch: int):
    """Compile ``kernel`` for sm_``arch`` with the arguments of a recorded launch."""
    _, args, kwargs = call
    signature, constexprs = {}, {}
    params = {p.name: p for p in kernel.params}
    for name, value in [*zip(kernel.arg_names[: len(args)], args, strict=True), *kwargs.items()]:
        if name in OPTIONS:
            continue
        if params[name].is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = POINTER_TYPES[value.dtype]
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif isinstance(value, int) and value == 1:  # Triton specialises integers equal to 1
            signature[name], constexprs[name] = "constexpr", 1
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        else:
            raise TypeError(f"{name}: unexpected launch argument {value!r}")
    options = {k: v for k, v in kwargs.items() if k in OPTIONS}
    compiled = triton.compile(
        ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
        target=GPUTarget("cuda", arch, 32),
        options=options,
    )
    assert compiled.asm.get("cubin"), "no cubin"
    return compiled


def _record(monkeypatch, module, attr: str, fn, *args, **kwargs):
    recorder = _Recorder()
    kernel = getattr(module, attr)
    monkeypatch.setattr(module, attr, recorder)
    fn(*args, **kwargs)
    (call,) = recorder.calls
    return kernel, call


@pytest.mark.parametrize(
    "arch,n,a,dtype,broadcast",
    [
        (90, 128, 40, torch.float32, False),
        (80, 7, 1, torch.bfloat16, True),
        (90, 300, 2, torch.float16, False),
    ],
)
def test_objective_compiles(monkeypatch, arch, n, a, dtype, broadcast):
    logits, logits0 = torch.randn(n, a, dtype=dtype), torch.randn(n, a, dtype=dtype)
    weights = torch.randn(a) if broadcast else torch.randn(n, a)  # [A] rows broadcast: stride 0
    preserve = torch.ones(n, a, dtype=torch.bool) if broadcast else torch.ones(n, a)
    kernel, call = _record(
        monkeypatch, _triton_objective, "_objective_kernel",
        _triton_objective.objective_triton, logits, logits0, weights, preserve, 0.1,
    )  # fmt: skip
    _compile_recorded(kernel, call, arch)


@pytest.mark.parametrize(
    "arch,n,d,a,dtype,accum,normalize,strided",
    [
        (90, 128, 64, 40, torch.float32, False, False, False),
        (90, 128, 64, 40, torch.float32, True, True, True),
        (80, 5, 1, 1, torch.float16, True, False, False),
        (90, 33, 100, 2, torch.bfloat16, False, True, True),
    ],
)
def test_ascent_update_compiles(monkeypatch, arch, n, d, a, dtype, accum, normalize, strided):
    z = torch.randn(n, d, dtype=dtype)
    grad = torch.randn(n, d + 10, dtype=dtype)[:, :d] if strided else torch.randn(n, d, dtype=dtype)
    status = torch.full((n,), ACTIVE, dtype=torch.int64 if strided else torch.int32)
    args = (z, z.clone(), grad, z.clone() if accum else None, torch.randn(n, a), torch.randn(n, a),
            torch.full((n,), math.nan), status, 0.1, math.inf, normalize)  # fmt: skip
    kernel, call = _record(
        monkeypatch,
        _triton_ascent_update,
        "_ascent_update_kernel",
        _triton_ascent_update.ascent_update_triton,
        *args,
    )
    _compile_recorded(kernel, call, arch)


# ------------------------------------------------------------------- torch.compile traces the operators


def _trace_with_fake_cuda(fn, *shapes_and_dtypes):
    """The functionalised graph of ``fn`` on fake CUDA tensors (no GPU needed), as AOTAutograd hands it to
    inductor, and its inputs."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    with FakeTensorMode(allow_non_fake_inputs=True):
        inputs = [torch.empty(shape, dtype=dtype, device="cuda") for shape, dtype in shapes_and_dtypes]
        return make_fx(dispatch_functionalize(fn))(*inputs), inputs


def _traced_kernel_launches(gm):
    """[(JITFunction, grid, kwargs with the launch's constants and num_warps)] of the graph's Triton nodes."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from triton.runtime.autotuner import Autotuner

    launches = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or "kernel_idx" not in node.kwargs:
            continue
        kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
        kwargs = {
            **node.kwargs["kwargs"],
            **kernel_side_table.get_constant_args(node.kwargs["constant_args_idx"]),
        }
        # tensor arguments are graph nodes: their fake values carry the dtypes the signature needs
        kwargs = {k: v.meta["val"] if isinstance(v, torch.fx.Node) else v for k, v in kwargs.items()}
        if isinstance(kernel, Autotuner):  # num_warps= at the launch becomes a one-config autotuner
            (config,) = kernel.configs
            kwargs.update(config.kwargs, num_warps=config.num_warps)
            kernel = kernel.fn
        launches.append((kernel, node.kwargs["grid"], kwargs))
    return launches


@pytest.mark.parametrize("accum", [False, True])
def test_a_compiled_step_launches_the_triton_kernels(monkeypatch, caplog, accum):
    """What the engine runs under torch.compile on CUDA: "auto" resolves to the Triton ops, and while
    tracing they become the zsteer:: operators, which decompose into the two Triton kernels (not into
    the references' aten ops); each traced launch compiles for sm_90."""
    import logging

    from zsteer.kernels.ascent_update import ascent_update
    from zsteer.kernels.objective import objective_fn

    # Without a driver, torch's analysis of which arguments a kernel writes fails and says so (it then
    # assumes all of them): a GPU machine does not take that path.
    caplog.set_level(logging.ERROR, logger="torch._higher_order_ops.triton_kernel_wrap")
    n, d, a = 128, 64, 40
    f32 = torch.float32
    specs = [((n, a), f32)] * 4 + [((n, d), f32)] * 4 + [((n,), f32), ((n,), torch.int32)]
    resolved = {}

    def step(logits, logits0, weights, preserve, z, z0, grad, acc, stop_prob, status):
        fn, resolved["objective"] = objective_fn("auto", logits)
        _, grad_logits = fn(logits, logits0, weights, preserve, 0.1)
        upd = ascent_update(z, z0, grad, acc if accum else None, logits, weights, stop_prob, status,
                            0.1, math.inf, True, impl="auto")  # fmt: skip
        return grad_logits, upd.z, upd.status

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as under torch.compile's tracing
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())  # a CPU-only torch
    gm, _ = _trace_with_fake_cuda(step, *specs)
    assert resolved == {"objective": "triton"}
    launches = _traced_kernel_launches(gm)
    names = [kernel.fn.__name__ for kernel, _, _ in launches]
    assert names == ["_objective_kernel", "_ascent_update_kernel"], names
    ops = {str(node.target) for node in gm.graph.nodes if node.op == "call_function"}
    assert not any("linalg_vector_norm" in op or "sigmoid" in op or "log" in op for op in ops), ops
    for kernel, grid, kwargs in launches:
        _compile_recorded(kernel, (grid, (), kwargs), 90)
