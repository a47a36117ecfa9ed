"""Writes the small ONNX fixtures of crates/model/tests (run from the repository root):

    training/.venv/bin/python crates/model/tests/data/make_fixtures.py

- ops.onnx: one graph using every operator the importer supports, in the forms PyTorch exports
  (unfolded BatchNormalization in three positions, grouped and padded Conv, bias as a separate
  Add, Pow(x, 2) with a Constant exponent, Mul(x, x), MatMul + Add, Gemm with alpha/beta, residual
  Add, Reshape with an initializer shape, Identity, Dropout, Flatten, Max/Average/GlobalAverage
  pooling). ops.json holds its output on a fixed input, computed by onnx.reference (an independent
  implementation of the operators), so the Rust test needs no Python.
- unsupported.onnx: Conv followed by a HardSwish node named "head/hardswish" (an activation the
  importer does not translate).
"""

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

OUT = Path(__file__).resolve().parent
rng = np.random.default_rng(4)


def init(name, *shape, scale=0.5, positive=False):
    a = rng.standard_normal(shape).astype(np.float32) * scale
    if positive:
        a = np.abs(a) + 0.5
    return numpy_helper.from_array(a, name)


def bn_inits(prefix, c):
    return [
        init(f"{prefix}.scale", c),
        init(f"{prefix}.bias", c),
        init(f"{prefix}.mean", c, scale=0.2),
        init(f"{prefix}.var", c, positive=True),
    ]


def bn(name, x, y, prefix, eps=1e-3):
    ins = [x, f"{prefix}.scale", f"{prefix}.bias", f"{prefix}.mean", f"{prefix}.var"]
    return helper.make_node("BatchNormalization", ins, [y], name=name, epsilon=eps)


def ops_model():
    inits = [
        init("conv_a.w", 4, 2, 3, 3),
        init("conv_a.b", 4),
        *bn_inits("bn_a", 4),
        init("conv_b.w", 4, 2, 3, 3),
        init("conv_b.bias", 1, 4, 1, 1),
        init("conv_c.w", 4, 4, 1, 1),
        init("conv_c.b", 4),
        *bn_inits("bn_r", 4),
        numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "flat.shape"),
        init("mm.w", 4, 5),
        init("mm.b", 5),
        *bn_inits("bn_d", 5),
        init("gemm.w", 3, 5),
        init("gemm.c", 3),
    ]
    N = helper.make_node
    nodes = [
        N("Conv", ["x", "conv_a.w", "conv_a.b"], ["a1"], name="conv_a", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        bn("bn_a", "a1", "a2", "bn_a"),
        N("Relu", ["a2"], ["a3"], name="relu_a"),
        N("MaxPool", ["a3"], ["p"], name="pool_a", kernel_shape=[2, 2], strides=[2, 2]),
        N("Conv", ["p", "conv_b.w"], ["b1"], name="conv_b", group=2, pads=[1, 1, 1, 1]),
        N("Add", ["b1", "conv_b.bias"], ["b2"], name="conv_b_bias"),
        N("Constant", [], ["two"], name="two", value=numpy_helper.from_array(np.array(2.0, dtype=np.float32))),
        N("Pow", ["b2", "two"], ["b3"], name="pow_b"),
        N("Conv", ["p", "conv_c.w", "conv_c.b"], ["c1"], name="conv_c"),
        N("Add", ["b3", "c1"], ["r"], name="residual"),
        bn("bn_r", "r", "r2", "bn_r"),
        N("AveragePool", ["r2"], ["v"], name="avg", kernel_shape=[2, 2], strides=[1, 1]),
        N("Mul", ["v", "v"], ["v2"], name="sq"),
        N("GlobalAveragePool", ["v2"], ["g"], name="gap"),
        N("Identity", ["g"], ["g2"], name="id"),
        N("Reshape", ["g2", "flat.shape"], ["f"], name="flat"),
        N("MatMul", ["f", "mm.w"], ["m1"], name="mm"),
        N("Add", ["m1", "mm.b"], ["m2"], name="mm_bias"),
        N("Dropout", ["m2"], ["m3"], name="drop"),
        bn("bn_d", "m3", "m4", "bn_d"),
        N("Gemm", ["m4", "gemm.w", "gemm.c"], ["o1"], name="gemm", transB=1, alpha=0.5, beta=2.0),
        N("Flatten", ["o1"], ["y"], name="flat2", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8, producer_name="cipherinfer-fixture")


def unsupported_model():
    N = helper.make_node
    graph = helper.make_graph(
        [
            N("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3]),
            N("HardSwish", ["c"], ["y"], name="head/hardswish"),
        ],
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
        [init("w", 2, 1, 3, 3)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def fixed_input(shape):
    n = int(np.prod(shape))
    return np.sin(0.37 * np.arange(n) + 0.1).astype(np.float32).reshape(shape)


def main():
    m = ops_model()
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, OUT / "ops.onnx")
    x = fixed_input((1, 2, 6, 6))
    y, r2 = ReferenceEvaluator(m).run(["y", "r2"], {"x": x})
    json.dump(
        {
            "note": "onnx.reference values of ops.onnx on x[i] = sin(0.37 i + 0.1) (float32): "
            "the output y and r2, the output of node bn_r",
            "output": [float(v) for v in y.ravel()],
            "bn_r": [float(v) for v in r2.ravel()],
        },
        open(OUT / "ops.json", "w"),
        indent=1,
    )
    u = unsupported_model()
    onnx.checker.check_model(u)
    onnx.save(u, OUT / "unsupported.onnx")
    print("ops output", y.ravel())


if __name__ == "__main__":
    main()
