"""torch.optim 2.13's SGD, Adam, AdamW, Adagrad, RMSprop, Adamax, NAdam, RAdam and Adadelta
as NumPy reference steps.

Written from torch's single-tensor paths (``torch/optim/<name>.py``:
``_single_tensor_sgd``, ``_single_tensor_adam``, ...), operation for operation, in
float64; ``lerp_(x, w)`` is written ``x + w (end − x)`` (torch's formula for
|w| < 0.5).  Keyword defaults are torch's.  ``state[key]`` is a list with one entry
per tensor, under torch's state names (``momentum_buffer``, ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``, ``sum``, ``square_avg``, ``grad_avg``,
``exp_inf``, ``mu_product``, ``acc_delta``).  NAdam's ``mu_product`` is one number per
tensor in torch; here it is an array of the tensor's shape holding that number, as
symopt's state keeps it.  ``t`` is torch's ``state["step"]`` after its increment.
"""
import math

import numpy as np


def _buffers(state, key, params, value=0.0):
    if key not in state:
        state[key] = [np.full_like(p, value) for p in params]
    return state[key]


def _grad(p, g, maximize, weight_decay):
    """``grad = -grad if maximize``, then the L2 form ``grad = grad + weight_decay * param``."""
    g = -g if maximize else g
    if weight_decay != 0:
        g = g + weight_decay * p
    return g


def sgd(params, grads, state, t, *, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
        nesterov=False, maximize=False):
    """``_single_tensor_sgd``: the buffer is a copy of the gradient at the first step."""
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    bufs = state.setdefault("momentum_buffer", [None] * len(params)) if momentum != 0 else None
    for i, (p, g) in enumerate(zip(params, grads)):
        g = _grad(p, g, maximize, weight_decay)
        if momentum != 0:
            buf = bufs[i]
            if buf is None:
                buf = g.copy()
                bufs[i] = buf
            else:
                buf *= momentum
                buf += (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p += -lr * g


def _adam(params, grads, state, t, *, lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay):
    """``_single_tensor_adam`` (capturable=False, differentiable=False)."""
    beta1, beta2 = betas
    exp_avgs, exp_avg_sqs = _buffers(state, "exp_avg", params), _buffers(state, "exp_avg_sq", params)
    max_sqs = _buffers(state, "max_exp_avg_sq", params) if amsgrad else None
    for i, (p, g) in enumerate(zip(params, grads)):
        g = -g if maximize else g
        if weight_decay != 0:
            if decoupled_weight_decay:
                p *= 1 - lr * weight_decay
            else:
                g = g + weight_decay * p
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        exp_avg += (1 - beta1) * (g - exp_avg)                 # lerp_(grad, 1 - beta1)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * g * g
        bias_correction1 = 1 - beta1**t
        bias_correction2 = 1 - beta2**t
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        if amsgrad:
            np.maximum(max_sqs[i], exp_avg_sq, out=max_sqs[i])
            denom = np.sqrt(max_sqs[i]) / bias_correction2_sqrt + eps
        else:
            denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
        p += -step_size * exp_avg / denom


def adam(params, grads, state, t, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
         maximize=False, decoupled_weight_decay=False):
    _adam(params, grads, state, t, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
          maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)


def adamw(params, grads, state, t, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
          maximize=False):
    """``AdamW`` is ``Adam(..., decoupled_weight_decay=True)`` in torch 2.13."""
    _adam(params, grads, state, t, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
          maximize=maximize, decoupled_weight_decay=True)


def adagrad(params, grads, state, t, *, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
            eps=1e-10, maximize=False):
    """``_single_tensor_adagrad`` (dense gradients)."""
    sums = _buffers(state, "sum", params, initial_accumulator_value)
    for p, g, s in zip(params, grads, sums):
        g = _grad(p, g, maximize, weight_decay)
        clr = lr / (1 + (t - 1) * lr_decay)
        s += 1 * g * g                                         # addcmul_(grad, grad, value=1)
        std = np.sqrt(s) + eps
        p += -clr * g / std


def rmsprop(params, grads, state, t, *, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
            centered=False, maximize=False):
    """``_single_tensor_rmsprop``."""
    square_avgs = _buffers(state, "square_avg", params)
    grad_avgs = _buffers(state, "grad_avg", params) if centered else None
    bufs = _buffers(state, "momentum_buffer", params) if momentum > 0 else None
    for i, (p, g) in enumerate(zip(params, grads)):
        g = _grad(p, g, maximize, weight_decay)
        sq = square_avgs[i]
        sq *= alpha
        sq += (1 - alpha) * g * g
        if centered:
            ga = grad_avgs[i]
            ga += (1 - alpha) * (g - ga)                       # lerp_(grad, 1 - alpha)
            avg = np.sqrt(sq - ga * ga)                        # addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        else:
            avg = np.sqrt(sq)
        avg = avg + eps
        if momentum > 0:
            buf = bufs[i]
            buf *= momentum
            buf += g / avg
            p += -lr * buf
        else:
            p += -lr * g / avg


def adamax(params, grads, state, t, *, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, maximize=False):
    """``_single_tensor_adamax`` (differentiable=False)."""
    beta1, beta2 = betas
    exp_avgs, exp_infs = _buffers(state, "exp_avg", params), _buffers(state, "exp_inf", params)
    for p, g, exp_avg, exp_inf in zip(params, grads, exp_avgs, exp_infs):
        g = _grad(p, g, maximize, weight_decay)
        exp_avg += (1 - beta1) * (g - exp_avg)
        exp_inf *= beta2
        np.maximum(exp_inf, np.abs(g) + eps, out=exp_inf)
        bias_correction = 1 - beta1**t
        clr = lr / bias_correction
        p += -clr * exp_avg / exp_inf


def nadam(params, grads, state, t, *, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
          momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False):
    """``_single_tensor_nadam`` (capturable=False, differentiable=False)."""
    beta1, beta2 = betas
    exp_avgs, exp_avg_sqs = _buffers(state, "exp_avg", params), _buffers(state, "exp_avg_sq", params)
    mu_products = _buffers(state, "mu_product", params, 1.0)
    for i, (p, g) in enumerate(zip(params, grads)):
        g = -g if maximize else g
        bias_correction2 = 1 - beta2**t
        if weight_decay != 0:
            if decoupled_weight_decay:
                p *= 1 - lr * weight_decay
            else:
                g = g + weight_decay * p
        mu = beta1 * (1.0 - 0.5 * (0.96 ** (t * momentum_decay)))
        mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((t + 1) * momentum_decay)))
        mu_products[i] *= mu
        mu_product = float(mu_products[i].flat[0]) if mu_products[i].size else 1.0
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        exp_avg += (1 - beta1) * (g - exp_avg)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * g * g
        denom = np.sqrt(exp_avg_sq / bias_correction2)
        mu_product_next = mu_product * mu_next
        denom = denom + eps
        p += (-lr * (1.0 - mu) / (1.0 - mu_product)) * g / denom
        p += ((-lr * mu_next) / (1.0 - mu_product_next)) * exp_avg / denom


def radam(params, grads, state, t, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
          decoupled_weight_decay=False, maximize=False):
    """``_single_tensor_radam`` (capturable=False)."""
    beta1, beta2 = betas
    exp_avgs, exp_avg_sqs = _buffers(state, "exp_avg", params), _buffers(state, "exp_avg_sq", params)
    for p, g, exp_avg, exp_avg_sq in zip(params, grads, exp_avgs, exp_avg_sqs):
        g = -g if maximize else g
        if weight_decay != 0:
            if decoupled_weight_decay:
                p *= 1 - lr * weight_decay
            else:
                g = g + weight_decay * p
        exp_avg += (1 - beta1) * (g - exp_avg)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * g * g
        bias_correction1 = 1 - beta1**t
        bias_correction2 = 1 - beta2**t
        bias_corrected_exp_avg = exp_avg / bias_correction1
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * t * (beta2**t) / bias_correction2
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            adaptive_lr = (bias_correction2**0.5) / (np.sqrt(exp_avg_sq) + eps)
            p += -1.0 * (bias_corrected_exp_avg * lr * adaptive_lr * rect)
        else:
            p += -1.0 * (bias_corrected_exp_avg * lr)


def adadelta(params, grads, state, t, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False):
    """``_single_tensor_adadelta``: ε inside both square roots."""
    square_avgs, acc_deltas = _buffers(state, "square_avg", params), _buffers(state, "acc_delta", params)
    for p, g, square_avg, acc_delta in zip(params, grads, square_avgs, acc_deltas):
        g = _grad(p, g, maximize, weight_decay)
        square_avg *= rho
        square_avg += (1 - rho) * g * g
        std = np.sqrt(square_avg + eps)
        delta = np.sqrt(acc_delta + eps)
        delta = delta / std * g
        acc_delta *= rho
        acc_delta += (1 - rho) * delta * delta
        p += -lr * delta


def adafactor(params, grads, state, t, *, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
              maximize=False):
    """``_single_tensor_adafactor``: row/column means of g² over the last two axes for ≥2-D params
    (``row_var`` (…, m, 1), ``col_var`` (…, 1, n)), the full ``variance`` for the others."""
    eps1, eps2 = eps
    if not state:
        state["row_var"] = [np.zeros(p.shape[:-1] + (1,)) if p.ndim > 1 else None for p in params]
        state["col_var"] = [np.zeros(p.shape[:-2] + (1, p.shape[-1])) if p.ndim > 1 else None for p in params]
        state["variance"] = [np.zeros_like(p) if p.ndim <= 1 else None for p in params]
    for j, (p, g) in enumerate(zip(params, grads)):
        g = -g if maximize else g
        e1 = np.finfo(p.dtype).eps if eps1 is None else eps1
        beta_t = t ** beta2_decay
        rho = min(lr, 1 / t ** 0.5)
        alpha = max(eps2, np.linalg.norm(p) / p.size ** 0.5) * rho
        if weight_decay != 0:
            p *= 1 - lr * weight_decay
        if p.ndim > 1:
            row, col = state["row_var"][j], state["col_var"][j]
            row += beta_t * ((g * g).mean(axis=-1, keepdims=True) - row)
            col += beta_t * ((g * g).mean(axis=-2, keepdims=True) - col)
            var = row @ col / np.maximum(row.mean(axis=-2, keepdims=True), e1)
        else:
            v = state["variance"][j]
            v += beta_t * (g * g - v)
            var = v.copy()
        u = g / np.sqrt(np.maximum(var, e1 * e1))
        denom = max(1.0, np.linalg.norm(u) / (u.size ** 0.5 * d))
        p += -alpha / denom * u
