"""The reference backend: every hot kernel written once in plain array code (``xp``).

Other backends subclass :class:`Backend` and override only the kernels they speed up; the math
here is the specification they are tested against.
"""

from __future__ import annotations

import numpy

from nnlite import activations, metrics
from nnlite import functional as F


class Backend:
    """Array module plus one method per hot kernel, implemented with ``self.xp``.

    Attributes:
        name: registry name ("numpy").
        xp: the array module (``numpy`` here, ``cupy`` on the GPU backend).
    """

    name = "numpy"
    #: Exceptions meaning "the device ran out of memory" (the CuPy backend adds CUDA's).
    memory_errors: tuple = (MemoryError,)

    def __init__(self):
        self.xp = numpy

    # -- arrays --------------------------------------------------------------------------------

    def asarray(self, x, dtype=None):
        """Return ``x`` as an array of this backend (no copy when it already is one)."""
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        """Return ``x`` as a NumPy array (a device-to-host copy on GPU backends)."""
        return numpy.asarray(x)

    def synchronize(self) -> None:
        """Wait for queued work to finish (a no-op on the CPU)."""

    def to_device(self, data):
        """Where a dataset lives during ``fit``: unchanged on the CPU, uploaded once on a GPU."""
        return data

    def gather(self, data, index, dtype, out=None):
        """Rows ``data[index]`` cast to ``dtype``: the batch a training step reads.

        Shapes:
            data: (N, ...)   index: (B,) integers   ->  (B, ...)   (written to ``out`` if given)
        """
        rows = data[index]
        if out is None:
            return self.asarray(rows.astype(dtype, copy=False))
        out[...] = self.asarray(rows)
        return out

    def matmul(self, a, b, out=None):
        """``a · b`` (BLAS on the CPU, cuBLAS on the GPU), into ``out`` when given."""
        return self.xp.matmul(a, b, out=out)

    # -- layers --------------------------------------------------------------------------------

    def dense_forward(self, x, kernel, bias, activation, out=None):
        """Fused Dense forward: ``z = x · kernel + bias``, ``y = activation(z)``.

        Args:
            out: optional preallocated ``(z, y)`` buffers of shape (N, M).

        Returns:
            ``(z, y)``; for a linear activation ``y`` is ``z``.
        """
        z = self.matmul(x, kernel, out=None if out is None else out[0])
        if bias is not None:
            z += bias
        return z, activation.forward(z)

    def dense_backward(self, dy, x, kernel, z, y, activation, need_dx=True, out=None):
        """Fused Dense backward: ``dz = f'(z) ⊙ dy``, then the affine gradients.

        Math:
            dkernel = xᵀ · dz      dbias = Σ_n dz[n]      dx = dz · kernelᵀ

        Args:
            need_dx: skip ``dx`` (returned as None) when False.
            out: optional preallocated ``(dkernel, dbias, dx, dz)``; entries may be None.

        Returns:
            ``(dx, dkernel, dbias)``.
        """
        dkernel_out, dbias_out, dx_out, _ = out or (None, None, None, None)
        dz = activation.backward(dy, z, y)
        dkernel = self.matmul(x.T, dz, out=dkernel_out)
        dbias = dz.sum(axis=0, out=dbias_out)
        dx = self.matmul(dz, kernel.T, out=dx_out) if need_dx else None
        return dx, dkernel, dbias

    def softmax_cross_entropy(self, logits, target):
        """Fused softmax cross-entropy: returns ``(mean loss, dlogits = (p − t) / N)``.

        ``target`` holds integer labels (N,) or one-hot rows (N, C).
        """
        return F.softmax_cross_entropy(logits, target)

    def dense_stack_step(self, x, target, plan):
        """Forward, fused softmax cross-entropy and backward of a stack of Dense layers.

        The whole training step of an MLP (without the optimizer): the per-layer kernels above,
        in order. ``plan`` (a ``nnlite.models.dense_stack.StackPlan``) holds each layer's
        parameters, its gradient arrays (written in place) and preallocated buffers.

        Math (a₀ = x, layers l = 1 … L; the loss reads z_L as logits, f_L is softmax or linear):
            forward   z_l = a_{l−1} · W_l + b_l          a_l = f_l(z_l)
            loss      (1/N) Σ_n Σ_c t[n, c] (logsumexp(z_L[n]) − z_L[n, c])   (t: one-hot labels)
            backward  dz_L = (softmax(z_L) − t) / N
                      dW_l = a_{l−1}ᵀ · dz_l    db_l = Σ_n dz_l[n]
                      dz_{l−1} = f'_{l−1}(z_{l−1}) ⊙ (dz_l · W_lᵀ)

        Returns:
            ``(loss, outputs)``: the mean loss and each layer's ``(z, a)``.
        """
        outputs, a = [], x
        for views in plan.layers:
            z, a = self.dense_forward(a, views.kernel, views.bias, views.activation,
                                      out=(views.z, views.y))
            outputs.append((z, a))
        loss, dy = self.softmax_cross_entropy(outputs[-1][0], target)
        # The loss already differentiated the last layer's activation: its dz is dy.
        activation = activations.get("linear")
        for index in range(len(plan.layers) - 1, -1, -1):
            views = plan.layers[index]
            z, y = outputs[index]
            a = x if index == 0 else outputs[index - 1][1]
            dy, _, _ = self.dense_backward(
                dy, a, views.kernel, z, y, activation, need_dx=index > 0,
                out=(views.dkernel, views.dbias, views.dx, views.dz),
            )
            activation = plan.layers[index - 1].activation
        return loss, outputs

    def dense_stack_train(self, data, targets, order, plan, updates, losses, correct=None):
        """Many steps of a Dense stack, each one batch and its optimizer update: what ``fit``
        runs when nothing reads the model between two steps.

        Step s trains on rows ``order[s·B:(s+1)·B]`` of ``data`` and ``targets`` (B: the plan's
        batch size; the batch is gathered into ``plan.x``) with :meth:`dense_stack_step`, writes
        its loss to ``losses[s]`` (and to ``correct[s]``, when given, how many predictions
        Keras's accuracy counts as right), then applies ``updates = (rule, state, scalars)`` to
        the packed parameters with ``scalars[s]`` (see ``Optimizer.compiled_updates``; the rules:
        SGD, momentum, Nesterov, Adam, RMSprop plain, with momentum or centered). Stops
        after the first step whose loss is not finite, as ``fit`` does.

        Shapes:
            data: (N, D_in)   targets: (N,) labels or (N, C) one-hot   order: (S·B,)
            scalars: (S, k)   losses, correct: (S,)
        Returns:
            the number of steps run.
        """
        rule, state, scalars = updates
        if rule not in ("adam", "sgd", "momentum", "nesterov", "rmsprop", "rmsprop_momentum",
                        "rmsprop_centered"):
            raise ValueError(f"dense_stack_train: unknown update rule {rule!r}")
        batch = plan.x.shape[0]
        for s in range(losses.size):
            index = order[s * batch:(s + 1) * batch]
            x = self.gather(data, index, plan.x.dtype, out=plan.x)
            target = targets[index]
            losses[s], outputs = self.dense_stack_step(x, target, plan)
            if correct is not None:
                accuracy = (metrics.sparse_categorical_accuracy if target.ndim == 1
                            else metrics.categorical_accuracy)
                correct[s] = accuracy(target, outputs[-1][1]).sum()
            k = scalars[s]
            if rule == "adam":
                self.adam_update(plan.params, plan.grads, *state, *k)
            elif rule.startswith("rmsprop"):
                extra = state[1] if len(state) > 1 else None
                self.rmsprop_update(plan.params, plan.grads, state[0], *k[:4],
                                    momentum=k[4] if rule == "rmsprop_momentum" else None,
                                    velocity=extra if rule == "rmsprop_momentum" else None,
                                    mean_grad=extra if rule == "rmsprop_centered" else None)
            elif rule == "sgd":
                self.sgd_update(plan.params, plan.grads, k[0])
            else:
                self.sgd_update(plan.params, plan.grads, k[0], k[1], state[0],
                                nesterov=rule == "nesterov")
            if not numpy.isfinite(losses[s]):
                return s + 1
        return losses.size

    # -- optimizers (all in place) -------------------------------------------------------------

    def sgd_update(self, param, grad, lr, momentum=None, velocity=None, nesterov=False):
        """SGD in place, with Keras's momentum form.

        Math:
            plain      p ← p − lr·g
            momentum   v ← μ·v − lr·g;  p ← p + v            (nesterov: p ← p + μ·v − lr·g)
        """
        if velocity is None:
            param -= grad * lr
            return
        velocity *= momentum
        velocity -= grad * lr
        if nesterov:
            param += velocity * momentum - grad * lr
        else:
            param += velocity

    def adam_update(self, param, grad, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
        """Adam in place, epsilon-hat form (bias correction folded into ``alpha``).

        Math:
            m ← m + (g − m)(1 − β₁)      v ← v + (g² − v)(1 − β₂)
            p ← p − alpha · m / (√v + ε̂)      alpha = lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ)
        """
        m += (grad - m) * one_minus_beta_1
        v += (grad * grad - v) * one_minus_beta_2
        param -= (m * alpha) / (self.xp.sqrt(v) + epsilon)

    def rmsprop_update(self, param, grad, v, lr, rho, one_minus_rho, epsilon,
                       momentum=None, velocity=None, mean_grad=None):
        """RMSprop in place, Keras's form (epsilon inside the square root).

        Math:
            v ← ρ·v + (1 − ρ)·g²            (centered: ḡ ← ρ·ḡ + (1 − ρ)·g;  d = v − ḡ²)
            step = lr · g / √(d + ε)        with d = v when not centered
            p ← p − step                     (momentum: u ← μ·u + step;  p ← p − u)
        """
        v *= rho
        v += one_minus_rho * (grad * grad)
        denominator = v
        if mean_grad is not None:
            mean_grad *= rho
            mean_grad += one_minus_rho * grad
            denominator = v - mean_grad * mean_grad
        step = (lr * grad) / self.xp.sqrt(denominator + epsilon)
        if velocity is None:
            param -= step
        else:
            velocity *= momentum
            velocity += step
            param -= velocity

    # -- LSTM (one time step, and the walk over the sequence) ----------------------------------

    def lstm_cell_forward(self, z, c_prev, activation, recurrent_activation, out=None):
        """One LSTM step with fused gates (Keras's gate order i, f, c, o).

        Shapes:
            z: (N, 4U), the gate pre-activations [z_i z_f z_g z_o] of this step (only read)
            c_prev: (N, U) = c_{t−1}
            out: optional preallocated ``(gates, c, act_c, h)``: gates (N, 4U), the others
                 (N, U); entries may be None

        Math (σ: recurrent_activation, φ: activation):
            i = σ(z_i)  f = σ(z_f)  g = φ(z_g)  o = σ(z_o)       gates = [i f g o]
            c = f ⊙ c_{t−1} + i ⊙ g        act_c = φ(c)        h = o ⊙ act_c

        Returns:
            ``(gates, c, act_c, h)``; backward needs the gates' activations, not z.
        """
        u = c_prev.shape[1]
        gates, c, act_c, h = out if out is not None else (None, None, None, None)
        if gates is None:
            gates = self.xp.empty_like(z)
        gates[:, :2 * u] = recurrent_activation.forward(z[:, :2 * u])
        gates[:, 2 * u:3 * u] = activation.forward(z[:, 2 * u:3 * u])
        gates[:, 3 * u:] = recurrent_activation.forward(z[:, 3 * u:])
        i, f, g, o = gates[:, :u], gates[:, u:2 * u], gates[:, 2 * u:3 * u], gates[:, 3 * u:]
        c = self.xp.multiply(f, c_prev, out=c)
        c += i * g
        if act_c is None:
            act_c = activation.forward(c)
        else:
            act_c[...] = activation.forward(c)
        h = self.xp.multiply(o, act_c, out=h)
        return gates, c, act_c, h

    def lstm_cell_backward(self, dh, dy, dc, gates, c_prev, act_c, activation,
                           recurrent_activation, out=None):
        """Backward through one LSTM step; ``dc`` is updated in place from dc_t to dc_{t−1}.

        Shapes:
            dh: (N, U) = dz_{t+1} · recurrent_kernelᵀ (zeros at the last step)
            dy: (N, U) gradient of the loss w.r.t. this step's output h_t, or None
            dc: (N, U) on entry ∂L/∂c_t from step t+1; on return ∂L/∂c_{t−1}
            gates: (N, 4U) activations [i f g o]     c_prev, act_c: (N, U)
            out: optional preallocated dz (N, 4U)

        Math:
            dh_t = dh + dy
            do = dh_t ⊙ φ(c_t)            dc_t = dc + dh_t ⊙ o ⊙ φ'(c_t)
            di = dc_t ⊙ g    df = dc_t ⊙ c_{t−1}    dg = dc_t ⊙ i    dc_{t−1} = dc_t ⊙ f
            dz = [di ⊙ σ'(z_i)  df ⊙ σ'(z_f)  dg ⊙ φ'(z_g)  do ⊙ σ'(z_o)]
        Each derivative is taken from the activation's output y (σ' = y(1−y), tanh' = 1−y²,
        relu' = [y > 0], linear' = 1), so the pre-activations need not be kept.

        Returns:
            dz (N, 4U), the gradient w.r.t. this step's gate pre-activations.
        """
        u = dc.shape[1]
        i, f, g, o = gates[:, :u], gates[:, u:2 * u], gates[:, 2 * u:3 * u], gates[:, 3 * u:]
        if dy is not None:
            dh = dh + dy
        dz = out if out is not None else self.xp.empty_like(gates)
        # The activations' backward takes (dy, x, y); passing y as x is exact for the four
        # activations allowed in an LSTM (relu's mask [x > 0] equals [y > 0]).
        dc += activation.backward(dh * o, act_c, act_c)
        dz[:, :u] = recurrent_activation.backward(dc * g, i, i)
        dz[:, u:2 * u] = recurrent_activation.backward(dc * c_prev, f, f)
        dz[:, 2 * u:3 * u] = activation.backward(dc * i, g, g)
        dz[:, 3 * u:] = recurrent_activation.backward(dh * act_c, o, o)
        dc *= f
        return dz

    def lstm_forward_sequence(self, xh, theta, gates, c, h, act_c, hz, activation,
                              recurrent_activation):
        """The LSTM's walk forward through time: per step one GEMM and one cell.

        Shapes (W = U + D + 1, or U + D without a bias):
            xh: (T, N, W), row block s = [h_s, x_{s+1}, 1]: on entry the x and ones columns of
                every step and h_0; the h columns of steps 1..T−1 are written
            theta: (W, 4U) = [recurrent_kernel; kernel; bias]
            gates: (T, N, 4U), written: the gate activations ``[i f g o]`` of every step
            c: (T+1, N, U) with ``c[0]`` the initial state; steps 1..T written
            h, act_c: (T, N, U) = h_1..h_T and φ(c_1..c_T), written      hz: (N, 4U) scratch

        Math, for s = 0..T−1 (step t = s+1):
            hz = xh_s · theta = h_{t−1} · recurrent_kernel + x_t · kernel + bias
            (gates_t, c_t, φ(c_t), h_t) = lstm_cell_forward(hz, c_{t−1})
            xh_{s+1}[:, :U] = h_t     (the next step's GEMM reads it there)
        """
        t, u = gates.shape[0], c.shape[2]
        for s in range(t):
            self.matmul(xh[s], theta, out=hz)
            self.lstm_cell_forward(hz, c[s], activation, recurrent_activation,
                                   out=(gates[s], c[s + 1], act_c[s], h[s]))
            if s + 1 < t:
                xh[s + 1, :, :u] = h[s]

    def lstm_backward_sequence(self, dy, gates, recurrent_kernel, c, act_c, dh, dc, dz,
                               activation, recurrent_activation):
        """The LSTM's walk backward through time: per step one cell backward and one GEMM.

        Shapes:
            dy: (T_y, N, U), ∂L/∂h of the last T_y steps (T_y = T with return_sequences, 1
                without: only h_T is an output)
            gates: (T, N, 4U) activations      c: (T+1, N, U)      act_c: (T, N, U)
            recurrent_kernel: (U, 4U)
            dh, dc: (N, U) scratch (set to zero first: nothing flows back from after step T)
            dz: (T, N, 4U), written: ∂L/∂z_t of every step

        Math, for t = T..1:
            dz_t = lstm_cell_backward(dh_t^rec, dy_t, dc_t^rec, gates_t, c_{t−1}, φ(c_t))
                   (which also turns dc into dc_{t−1}^rec = dc_t ⊙ f)
            dh_{t−1}^rec = dz_t · recurrent_kernelᵀ   (not for t = 1: h_0 is a constant)
        """
        t = gates.shape[0]
        first_dy = t - dy.shape[0]  # the first step with an output gradient
        recurrent_t = recurrent_kernel.T
        dh[...] = 0
        dc[...] = 0
        for s in reversed(range(t)):
            dy_s = dy[s - first_dy] if s >= first_dy else None
            self.lstm_cell_backward(dh, dy_s, dc, gates[s], c[s], act_c[s], activation,
                                    recurrent_activation, out=dz[s])
            if s > 0:
                self.matmul(dz[s], recurrent_t, out=dh)
