import jax
import jax.numpy as jnp
from jax import lax

from jax_i2v.op_profile import KINDS, op_time_breakdown


def _breakdown(fn, *args):
    compiled = jax.jit(fn).lower(*args).compile()
    return op_time_breakdown(compiled, lambda: compiled(*args), repeats=2)


def test_a_convolution_and_a_matmul_are_counted_under_their_own_kinds():
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 64))
    w = jax.random.normal(jax.random.key(1), (3, 3, 64, 64))
    conv = _breakdown(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), x, w)
    a = jax.random.normal(jax.random.key(2), (512, 512))
    matmul = _breakdown(lambda a, b: a @ b, a, a)
    assert set(KINDS) <= conv.keys() and conv["ops_per_run"] >= 1 and matmul["ops_per_run"] >= 1
    assert conv["convolution"] > 0 and conv["convolution"] >= 0.8 * sum(conv[k] for k in KINDS)
    assert matmul["matmul"] > 0 and matmul["matmul"] >= 0.8 * sum(matmul[k] for k in KINDS)


def test_elementwise_work_is_not_counted_as_a_matmul():
    x = jax.random.normal(jax.random.key(0), (1024, 1024))
    result = _breakdown(lambda x: jnp.tanh(x) * 2 + 1, x)
    assert result["elementwise"] > 0 and result["matmul"] == result["convolution"] == 0
