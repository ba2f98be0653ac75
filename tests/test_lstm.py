"""LSTM: gradient checks, Keras parity, backend agreement, MNIST smoke test, memory estimate."""

from __future__ import annotations

import numpy as np
import pytest

import nnlite
from nnlite import activations, config
from nnlite.gradcheck import check_layer, layer_gradients, relative_error
from nnlite.layers import lstm as lstm_module
from nnlite.layers.lstm import LSTM, InsufficientMemoryError, check_memory, memory_estimate

N, T, D, U = 3, 4, 5, 4


def _sequence(seed=0, shape=(N, T, D)):
    return np.random.default_rng(seed).normal(size=shape)


# -- construction and shapes -------------------------------------------------------------------


def test_weights_follow_keras_layout_and_initialization(float64):
    layer = LSTM(U)
    layer.build((None, T, D))
    assert list(layer.params) == ["kernel", "recurrent_kernel", "bias"]
    kernel, recurrent, bias = layer.get_weights()
    assert kernel.shape == (D, 4 * U) and recurrent.shape == (U, 4 * U) and bias.shape == (4 * U,)
    # glorot_uniform with fan_in = D, fan_out = 4U; orthogonal rows; forget-gate bias 1.
    assert np.abs(kernel).max() <= np.sqrt(6 / (D + 4 * U))
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(U), atol=1e-12)
    np.testing.assert_array_equal(bias, np.r_[np.zeros(U), np.ones(U), np.zeros(2 * U)])
    assert all(p.flags.c_contiguous for p in layer.params.values())
    no_forget = LSTM(U, unit_forget_bias=False)
    no_forget.build((None, T, D))
    np.testing.assert_array_equal(no_forget.get_weights()[2], np.zeros(4 * U))
    assert len(LSTM(U, use_bias=False)(_sequence()).shape) == 2


@pytest.mark.parametrize("return_sequences", [False, True])
def test_output_shape_and_dtype(backend, return_sequences):
    layer = LSTM(U, return_sequences=return_sequences)
    y = layer(_sequence().astype(np.float32))
    expected = (N, T, U) if return_sequences else (N, U)
    assert y.shape == expected == (N,) + layer.compute_output_shape((None, T, D))[1:]
    assert y.dtype == np.float32
    dx = layer.backward(np.ones(expected, np.float32))
    assert dx.shape == (N, T, D) and dx.dtype == np.float32
    assert all(layer.grads[k].dtype == np.float32 for k in layer.params)


def test_argument_errors():
    with pytest.raises(ValueError, match="units"):
        LSTM(0)
    with pytest.raises(ValueError, match="activation"):
        LSTM(3, activation="softmax")
    with pytest.raises(ValueError, match="timesteps"):
        LSTM(3)(np.zeros((2, 5)))
    layer = LSTM(3)
    layer(np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="expects inputs of shape"):
        layer(np.zeros((2, 4, 6)))


# -- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("acts", [("tanh", "sigmoid"), ("relu", "linear"), ("sigmoid", "tanh")])
def test_gradient_check(backend, float64, return_sequences, acts):
    layer = LSTM(U, activation=acts[0], recurrent_activation=acts[1],
                 return_sequences=return_sequences)
    errors = check_layer(layer, _sequence(1))
    assert set(errors) == {"input", "kernel", "recurrent_kernel", "bias"}
    assert max(errors.values()) < 1e-6, errors


def test_gradient_check_without_bias(backend, float64):
    errors = check_layer(LSTM(U, use_bias=False, return_sequences=True), _sequence(2))
    assert max(errors.values()) < 1e-6, errors


def test_reused_buffers_give_the_same_results(backend, float64):
    layer = LSTM(U, return_sequences=True)
    x, dy = _sequence(3), _sequence(4, (N, T, U))
    plain = layer_gradients(layer, x, dy)
    y_plain = np.array(layer(x))
    layer.reuse_buffers = True
    for _ in range(2):  # the second pass runs on the buffers the first one allocated
        reused = layer_gradients(layer, x, dy)
        np.testing.assert_array_equal(np.array(layer(x)), y_plain)
    for key, value in plain.items():
        np.testing.assert_allclose(reused[key], value, rtol=1e-13, atol=1e-15)


# -- Keras parity ------------------------------------------------------------------------------


@pytest.mark.parametrize("return_sequences", [False, True])
def test_matches_keras(backend, float64, return_sequences):
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(5)
    n, t, d, u = 4, 6, 5, 7
    x = rng.normal(size=(n, t, d))
    reference = keras.layers.LSTM(u, return_sequences=return_sequences, dtype="float64")
    reference.build((None, t, d))
    weights = [rng.normal(scale=0.5, size=w.shape) for w in reference.get_weights()]
    reference.set_weights(weights)
    x_tf = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_tf)
        y_ref = reference(x_tf)
        dy = rng.normal(size=tuple(y_ref.shape))
        loss = tf.reduce_sum(y_ref * dy)
    grads_ref = tape.gradient(loss, [x_tf] + reference.trainable_weights)

    layer = LSTM(u, return_sequences=return_sequences)
    layer.build((None, t, d))
    layer.set_weights(weights)
    y = layer(x)
    dx = layer.backward(dy)
    assert y.shape == tuple(y_ref.shape)
    assert relative_error(y, y_ref.numpy()) <= 1e-9
    assert relative_error(dx, grads_ref[0].numpy()) <= 1e-9
    for key, ref in zip(["kernel", "recurrent_kernel", "bias"], grads_ref[1:]):
        assert relative_error(layer.grads[key], ref.numpy()) <= 1e-9, key


# -- Numba kernels against their Python form and the NumPy backend -----------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("acts", [("tanh", "sigmoid"), ("relu", "linear"), ("linear", "relu")])
def test_numba_cell_kernels(dtype, acts):
    pytest.importorskip("numba")
    from nnlite.backend import numba_kernels as K

    rng = np.random.default_rng(6)
    n, u = 5, 6
    act, rec = (activations.get(a) for a in acts)
    codes = (K.CODES[act.name], K.CODES[rec.name])
    z = (rng.normal(size=(n, 4 * u)) * 3).astype(dtype)
    c_prev = rng.normal(size=(n, u)).astype(dtype)
    tol = {"float32": 2e-6, "float64": 1e-13}[dtype]

    gates_ref, c_ref, a_ref, h_ref = nnlite.backend.Backend().lstm_cell_forward(
        z, c_prev, act, rec)
    for kernel in (K.lstm_cell_forward.serial, K.lstm_cell_forward.parallel,
                   K.lstm_cell_forward.py_func):
        outs = [np.empty((n, 4 * u), dtype)] + [np.empty((n, u), dtype) for _ in range(3)]
        kernel(z.copy(), c_prev, *codes, *outs)
        for got, want in zip(outs, [gates_ref, c_ref, a_ref, h_ref]):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)

    dh = rng.normal(size=(n, u)).astype(dtype)
    dy = rng.normal(size=(n, u)).astype(dtype)
    dc0 = rng.normal(size=(n, u)).astype(dtype)
    dc_ref = dc0.copy()
    dz_ref = nnlite.backend.Backend().lstm_cell_backward(dh, dy, dc_ref, gates_ref, c_prev,
                                                         a_ref, act, rec)
    for kernel in (K.lstm_cell_backward.serial, K.lstm_cell_backward.parallel,
                   K.lstm_cell_backward.py_func):
        dc, dz = dc0.copy(), np.empty_like(gates_ref)
        kernel(dh, dy, True, dc, gates_ref, c_prev, a_ref, *codes, dz)
        np.testing.assert_allclose(dz, dz_ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(dc, dc_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numba_cell_kernels_write_no_subnormals(dtype):
    # Saturated gates (a too-large learning rate) must not leave subnormal numbers in c, h, dz
    # and dc: the arithmetic and GEMMs that read them would run tens of times slower.
    pytest.importorskip("numba")
    from nnlite.backend import numba_kernels as K

    rng = np.random.default_rng(7)
    n, u = 8, 16
    z = (rng.normal(size=(n, 4 * u)) * 300).astype(dtype)
    c_prev = (rng.normal(size=(n, u)) * 1e-3).astype(dtype)
    gates = np.empty_like(z)
    c, act_c, h = (np.empty((n, u), dtype) for _ in range(3))
    K.lstm_cell_forward(z.size, z, c_prev, K.TANH, K.SIGMOID, gates, c, act_c, h)
    dh = (rng.normal(size=(n, u)) * 1e-6).astype(dtype)
    dc = (rng.normal(size=(n, u)) * 1e-6).astype(dtype)
    dz = np.empty_like(gates)
    K.lstm_cell_backward(gates.size, dh, dh, False, dc, gates, c_prev, act_c, K.TANH,
                         K.SIGMOID, dz)
    tiny = np.finfo(dtype).tiny
    for name, a in dict(gates=gates, c=c, act_c=act_c, h=h, dz=dz, dc=dc).items():
        assert not np.any((a != 0) & (np.abs(a) < tiny)), name
    assert np.any(gates == 0) and np.any(dz == 0)  # the test did reach saturation


def test_numba_exp_and_activations_are_accurate():
    pytest.importorskip("numba")
    import numba

    from nnlite.backend import numba_kernels as K

    @numba.njit
    def apply(x, out, which):
        for j in range(x.size):
            out[j] = K.lstm_exp(x[j]) if which == 0 else (
                K.lstm_sigmoid(x[j]) if which == 1 else K.lstm_tanh(x[j]))

    # exp to a relative, sigmoid and tanh to an absolute tolerance (about two ulps of 1).
    for dtype, tol in (("float32", 3e-7), ("float64", 1e-15)):
        x = np.concatenate([np.linspace(-80, 80, 2001), np.linspace(-0.1, 0.1, 2001)])
        x = x.astype(dtype)
        out = np.empty_like(x)
        for which, ref in enumerate((np.exp, lambda v: 1 / (1 + np.exp(-v)), np.tanh)):
            apply(x, out, which)
            want = ref(x.astype(np.float64))
            assert out.dtype == np.dtype(dtype)
            scale = np.abs(want) if which == 0 else 1
            assert np.all(np.abs(out - want) <= tol * scale), which
        extremes = np.array([-1e4, -100.0, 100.0, 1e4], dtype)
        apply(extremes, out[:4], 1)
        # saturated, never subnormal: x is clamped where 1/(1 + exp(−x)) is still normal
        tiny = np.finfo(dtype).tiny
        assert np.all((tiny <= out[:2]) & (out[:2] < 1e-37)) and np.all(out[2:4] == 1)
        apply(extremes, out[:4], 2)
        np.testing.assert_array_equal(out[:4], [-1, -1, 1, 1])


# -- training ----------------------------------------------------------------------------------


def _lstm_model(units, lr, seed=0):
    model = nnlite.Sequential([
        nnlite.Input((784,)),
        nnlite.layers.Reshape((28, 28)),
        LSTM(units),
        nnlite.layers.Dense(10, activation="softmax"),
    ], seed=seed)
    model.compile(optimizer=nnlite.optimizers.Adam(learning_rate=lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture
def one_blas_thread():
    """One BLAS thread: the GEMMs here are small (100 × 64 · 64 × 256), and on a small machine
    shared with other work, BLAS threads that spin while waiting made this test 15x slower."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def mnist_sequences():
    (x, y), (xt, yt) = nnlite.datasets.mnist.load_data()
    x = x[:10000].reshape(10000, -1).astype(np.float32) / 255
    xt = xt[:1000].reshape(1000, -1).astype(np.float32) / 255
    return (x, y[:10000]), (xt, yt[:1000])


def test_one_epoch_on_mnist_rows(backend, mnist_sequences, one_blas_thread):
    (x, y), (xt, yt) = mnist_sequences
    model = _lstm_model(64, 1e-2)
    history = model.fit(x, y, batch_size=100, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    _, accuracy = model.evaluate(xt, yt, batch_size=500, verbose=0)
    assert accuracy > 0.8


def test_numpy_and_numba_train_identically(float64, mnist_sequences, one_blas_thread):
    pytest.importorskip("numba")
    (x, y), _ = mnist_sequences
    results = {}
    for name in ("numpy", "numba"):
        nnlite.set_backend(name)
        model = _lstm_model(16, 3e-3, seed=3)
        model.fit(x[:400], y[:400], batch_size=100, epochs=2, verbose=0, shuffle=True)
        results[name] = (model.get_weights(), model.predict(x[400:500], verbose=0))
    for a, b in zip(results["numpy"][0] + [results["numpy"][1]],
                    results["numba"][0] + [results["numba"][1]]):
        assert relative_error(a, b) <= 1e-9


# -- memory estimate ---------------------------------------------------------------------------


def test_memory_estimate_counts():
    estimate = memory_estimate({"units": 4096, "input_dim": 28, "seq_len": 28}, 100,
                               dtype="float32")
    params = 4 * 4096 * (28 + 4096 + 1)
    assert estimate.parameters == estimate.gradients == params * 4
    assert estimate.optimizer_slots == 2 * params * 4
    # at least gates (kept and their gradient) and c, h, φ(c): (2·4U + 4U)·T·N floats
    assert estimate.activations >= (8 + 3) * 4096 * 28 * 100 * 4
    assert memory_estimate({"units": 4096, "input_dim": 28, "seq_len": 28}, 200,
                           dtype="float32").activations == 2 * estimate.activations
    assert "GiB" in str(estimate) and estimate.total == estimate.fixed + estimate.activations
    model = _lstm_model(32, 1e-3)
    whole = memory_estimate(model, 100)
    layer = memory_estimate(model.layers[1], 100, optimizer_slots=2)
    assert whole.parameters == model.count_params() * 4
    assert whole.activations > layer.activations


def test_memory_check_refuses_before_allocating():
    # 100,000 units: 4·10⁵·10⁵ float32 parameters alone are 160 GB; build must refuse.
    layer = LSTM(100_000)
    with pytest.raises(InsufficientMemoryError, match="reduce the number of units") as info:
        layer.build((None, 28, 28))
    assert isinstance(info.value, MemoryError)
    assert not layer.params and not layer.built
    assert info.value.suggested_batch_size == 0


def test_memory_check_suggests_a_batch_size(monkeypatch):
    layer = LSTM(64)
    layer.build((None, 28, 28))
    needed = memory_estimate(layer, 100)
    budget = needed.fixed + needed.activations // 3  # a third of the batch fits
    monkeypatch.setattr(lstm_module, "available_memory", lambda: budget - needed.parameters)
    with pytest.raises(InsufficientMemoryError, match=r"batch_size=100 needs about") as info:
        layer(np.zeros((100, 28, 28), np.float32))
    suggested = info.value.suggested_batch_size
    assert 25 <= suggested <= 34 and f"batch_size={suggested}" in str(info.value)
    assert not layer._buffers and layer._cache is None
    check_memory(layer, suggested)  # the suggestion fits
    assert layer(np.zeros((suggested, 28, 28), np.float32)).shape == (suggested, 64)


def test_memory_check_of_the_seed_case():
    # The seed's case (4096 units, batch 100, T = 28), with the available memory given.
    config_4096 = {"units": 4096, "input_dim": 28, "seq_len": 28}
    needed = memory_estimate(config_4096, 100, dtype="float32")
    with pytest.raises(InsufficientMemoryError, match="try batch_size=") as info:
        check_memory(config_4096, 100, dtype="float32",
                     available=needed.fixed + needed.activations // 2)
    assert 45 <= info.value.suggested_batch_size <= 50
    with pytest.raises(InsufficientMemoryError, match="no batch size fits"):
        check_memory(config_4096, 100, dtype="float32", available=needed.fixed // 2)
    assert check_memory(config_4096, 100, dtype="float32", available=1 << 40) == needed
    assert config.floatx() == "float32"
