"""The research catalog's rules as NumPy reference steps, transcribed from the papers' algorithm
boxes and the reference libraries' step functions (pytorch-optimizer 4.1.0, schedulefree 1.4.1,
Optax 0.2.8), operation for operation, in float64 -- not from symopt's rules.

Conventions: ``state[key]`` is a list with one array per tensor, keyed like the rule's
``state_dict``; ``t`` is the 1-based step; keyword names and defaults are the rule's (the
reference library's).  Norms and means "over the tensor" are over each array, "global" over
all of them.  ``lerp(a, b, w) = a + w (b − a)`` (torch's ``lerp_``).
"""
import math

import numpy as np


def _zeros(state, key, params):
    if key not in state:
        state[key] = [np.zeros_like(p) for p in params]
    return state[key]


def _copy(state, key, params):
    if key not in state:
        state[key] = [p.copy() for p in params]
    return state[key]


def _lerp(a, b, w):
    return a + w * (b - a)


def _rms(x):
    return math.sqrt(float(np.mean(x * x)))


# -- Adan: Xie et al. 2022, Algorithm 1 (paper's β are 1 − ours); pytorch-optimizer Adan --------------
def adan(params, grads, state, t, *, lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.0):
    b1, b2, b3 = betas
    ms, vs = _zeros(state, "exp_avg", params), _zeros(state, "exp_avg_diff", params)
    ns = _zeros(state, "exp_avg_sq", params)
    prev = _zeros(state, "previous_grad", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        diff = np.zeros_like(g) if t == 1 else g - prev[j]          # g_0 := g_1
        ms[j] = (1 - b1) * g + b1 * ms[j]
        vs[j] = (1 - b2) * diff + b2 * vs[j]
        ns[j] = (1 - b3) * (g + b2 * diff) ** 2 + b3 * ns[j]
        eta = lr / (np.sqrt(ns[j] / (1 - b3**t)) + eps)
        p[...] = (p - eta * (ms[j] / (1 - b1**t) + b2 * vs[j] / (1 - b2**t))) / (1 + lr * weight_decay)
        prev[j] = g.copy()


# -- ADOPT: Taniguchi et al. 2024, Algorithm 1 with clipping c_t = t^(1/4) ------------------------------
def adopt(params, grads, state, t, *, lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, weight_decay=0.0):
    b1, b2 = betas
    ms, vs = _zeros(state, "exp_avg", params), _zeros(state, "exp_avg_sq", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        g = g + weight_decay * p
        if t == 1:
            vs[j] = g * g                                            # v_0 = g_0², no step
            continue
        c = t ** 0.25
        ms[j] = b1 * ms[j] + (1 - b1) * np.clip(g / np.maximum(np.sqrt(vs[j]), eps), -c, c)
        p -= lr * ms[j]
        vs[j] = b2 * vs[j] + (1 - b2) * g * g


# -- LaProp: Ziyin et al. 2020, Algorithm 1; pytorch-optimizer LaProp (√(v + 1e-15) + ε) -----------------
def laprop(params, grads, state, t, *, lr=4e-4, betas=(0.9, 0.999), eps=1e-15, weight_decay=0.0):
    b1, b2 = betas
    ms, vs = _zeros(state, "exp_avg", params), _zeros(state, "exp_avg_sq", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        vs[j] = b2 * vs[j] + (1 - b2) * g * g
        ms[j] = b1 * ms[j] + (1 - b1) * lr * g / ((np.sqrt(vs[j] + 1e-15) + eps) / math.sqrt(1 - b2**t))
        p[...] = (p - ms[j] / (1 - b1**t)) * (1 - lr * weight_decay)


# -- AdaBound / AMSBound: Luo et al. 2019, Algorithm 2/3 as the authors' code ------------------------
def _adabound(params, grads, state, t, lr, final_lr, betas, gamma, eps, weight_decay, ams):
    b1, b2 = betas
    ms, vs = _zeros(state, "exp_avg", params), _zeros(state, "exp_avg_sq", params)
    vmax = _zeros(state, "max_exp_avg_sq", params) if ams else None
    lower = final_lr * (1 - 1 / (gamma * t + 1))
    upper = final_lr * (1 + 1 / (gamma * t))
    step = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
    for j, (p, g) in enumerate(zip(params, grads)):
        p *= 1 - lr * weight_decay
        ms[j] = b1 * ms[j] + (1 - b1) * g
        vs[j] = b2 * vs[j] + (1 - b2) * g * g
        v = vs[j]
        if ams:
            vmax[j] = np.maximum(vmax[j], vs[j])
            v = vmax[j]
        eta = np.clip(step / (np.sqrt(v + 1e-15) + eps), lower, upper)
        p -= eta * ms[j]


def adabound(params, grads, state, t, *, lr=1e-3, final_lr=0.1, betas=(0.9, 0.999), gamma=1e-3, eps=1e-8,
             weight_decay=0.0):
    _adabound(params, grads, state, t, lr, final_lr, betas, gamma, eps, weight_decay, ams=False)


def amsbound(params, grads, state, t, *, lr=1e-3, final_lr=0.1, betas=(0.9, 0.999), gamma=1e-3, eps=1e-8,
             weight_decay=0.0):
    _adabound(params, grads, state, t, lr, final_lr, betas, gamma, eps, weight_decay, ams=True)


# -- AdaMod: Ding et al. 2019, Algorithm 1 ----------------------------------------------------------
def adamod(params, grads, state, t, *, lr=1e-3, betas=(0.9, 0.99, 0.9999), eps=1e-8, weight_decay=0.0):
    b1, b2, b3 = betas
    ms, vs = _zeros(state, "exp_avg", params), _zeros(state, "exp_avg_sq", params)
    ss = _zeros(state, "exp_avg_lr", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        p *= 1 - lr * weight_decay
        ms[j] = b1 * ms[j] + (1 - b1) * g
        vs[j] = b2 * vs[j] + (1 - b2) * g * g
        eta = lr * math.sqrt(1 - b2**t) / (1 - b1**t) / (np.sqrt(vs[j]) + eps)
        ss[j] = b3 * ss[j] + (1 - b3) * eta
        p -= np.minimum(eta, ss[j]) * ms[j]


# -- QHAdam / QHM: Ma & Yarats 2019, Algorithms 1-2 -----------------------------------------------------
def qhadam(params, grads, state, t, *, lr=1e-3, betas=(0.995, 0.999), nus=(0.7, 1.0), eps=1e-8, weight_decay=0.0):
    b1, b2 = betas
    nu1, nu2 = nus
    ms, vs = _zeros(state, "exp_avg", params), _zeros(state, "exp_avg_sq", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        g = g + weight_decay * p
        # bias-corrected EMAs kept directly: m_t = (β m_{t−1} (1−β^{t−1}) + (1−β) g) / (1−β^t)
        ms[j] = (b1 * (1 - b1 ** (t - 1)) * ms[j] + (1 - b1) * g) / (1 - b1**t)
        vs[j] = (b2 * (1 - b2 ** (t - 1)) * vs[j] + (1 - b2) * g * g) / (1 - b2**t)
        p -= lr * (nu1 * ms[j] + (1 - nu1) * g) / (np.sqrt(nu2 * vs[j] + (1 - nu2) * g * g) + eps)


def qhm(params, grads, state, t, *, lr=1e-3, momentum=0.999, nu=0.7, weight_decay=0.0):
    bs = _zeros(state, "momentum_buffer", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        g = g + weight_decay * p
        bs[j] = momentum * bs[j] + (1 - momentum) * g
        p -= lr * (nu * bs[j] + (1 - nu) * g)


# -- Schedule-free SGD / AdamW: Defazio et al. 2024, Algorithm 1 (y, z form; x implicit) -----------------
def sgd_schedulefree(params, grads, state, t, *, lr=1.0, momentum=0.9, weight_decay=0.0):
    zs = _copy(state, "z", params)
    ck = 1.0 / t                                   # w_t / Σ w for equal weights
    for j, (y, g) in enumerate(zip(params, grads)):
        x = (y - (1 - momentum) * zs[j]) / momentum if momentum > 0 else zs[j]   # the averaged iterate
        g = g + weight_decay * y
        zs[j] = zs[j] - lr * g
        x = (1 - ck) * x + ck * zs[j]
        y[...] = (1 - momentum) * zs[j] + momentum * x


def adamw_schedulefree(params, grads, state, t, *, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    b1, b2 = betas
    zs, vs = _copy(state, "z", params), _zeros(state, "exp_avg_sq", params)
    ck = 1.0 / t
    for j, (y, g) in enumerate(zip(params, grads)):
        x = (y - (1 - b1) * zs[j]) / b1
        vs[j] = b2 * vs[j] + (1 - b2) * g * g
        d = g / (np.sqrt(vs[j] / (1 - b2**t)) + eps) + weight_decay * y
        zs[j] = zs[j] - lr * d
        x = (1 - ck) * x + ck * zs[j]
        y[...] = (1 - b1) * zs[j] + b1 * x


# -- MARS-AdamW: Yuan et al. 2024, Algorithm 2 (as pytorch-optimizer, √(v + 1e-15)) --------------------
def mars_adamw(params, grads, state, t, *, lr=3e-3, betas=(0.95, 0.99), gamma=0.025, eps=1e-8, weight_decay=0.0):
    b1, b2 = betas
    ms, vs = _zeros(state, "exp_avg", params), _zeros(state, "exp_avg_sq", params)
    last = _zeros(state, "last_grad", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        c = g + gamma * b1 / (1 - b1) * (g - last[j])
        norm = np.linalg.norm(c)
        if norm > 1:
            c = c / norm
        ms[j] = b1 * ms[j] + (1 - b1) * c
        vs[j] = b2 * vs[j] + (1 - b2) * c * c
        m_hat = ms[j] / (1 - b1**t)
        denom = (np.sqrt(vs[j] + 1e-15) + eps) / math.sqrt(1 - b2**t)
        p[...] = p * (1 - lr * weight_decay) - lr * m_hat / denom
        last[j] = g.copy()


# -- Cautious AdamW / Lion: Liang et al. 2024, Algorithms 1-2 (mask scaled by n / (Σφ + 1)) --------------
def _cautious(u, g):
    phi = (u * g > 0).astype(np.float64)
    return u * phi * (phi.size / (phi.sum() + 1))


def cautious_adamw(params, grads, state, t, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    b1, b2 = betas
    ms, vs = _zeros(state, "exp_avg", params), _zeros(state, "exp_avg_sq", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        ms[j] = b1 * ms[j] + (1 - b1) * g
        vs[j] = b2 * vs[j] + (1 - b2) * g * g
        u = (ms[j] / (1 - b1**t)) / (np.sqrt(vs[j] / (1 - b2**t)) + eps)
        p[...] = p - lr * _cautious(u, g) - lr * weight_decay * p


def cautious_lion(params, grads, state, t, *, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
    b1, b2 = betas
    ms = _zeros(state, "exp_avg", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        u = np.sign(b1 * ms[j] + (1 - b1) * g)
        ms[j] = b2 * ms[j] + (1 - b2) * g
        p[...] = p * (1 - lr * weight_decay) - lr * _cautious(u, g)


# -- LAMB: You et al. 2020, Algorithm 2 (φ = identity), as optax.lamb ------------------------------------
def lamb(params, grads, state, t, *, lr=1e-3, b1=0.9, b2=0.999, eps=1e-6, eps_root=0.0, weight_decay=0.0):
    ms, vs = _zeros(state, "mu", params), _zeros(state, "nu", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        ms[j] = b1 * ms[j] + (1 - b1) * g
        vs[j] = b2 * vs[j] + (1 - b2) * g * g
        r = (ms[j] / (1 - b1**t)) / (np.sqrt(vs[j] / (1 - b2**t) + eps_root) + eps) + weight_decay * p
        pn, rn = np.linalg.norm(p), np.linalg.norm(r)
        ratio = pn / rn if pn > 0 and rn > 0 else 1.0
        p -= lr * ratio * r


# -- LARS: You et al. 2017, Algorithm 1, as optax.lars (momentum on the scaled gradient) -----------------
def lars(params, grads, state, t, *, lr=1e-2, weight_decay=0.0, trust_coefficient=1e-3, eps=0.0, momentum=0.9,
         nesterov=False):
    bs = _zeros(state, "trace", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        u = g + weight_decay * p
        pn, un = np.linalg.norm(p), np.linalg.norm(u)
        if pn > 0 and un > 0:
            u = u * (trust_coefficient * pn / (un + eps))
        bs[j] = momentum * bs[j] + u
        p -= lr * (u + momentum * bs[j] if nesterov else bs[j])


# -- signSGD / Signum: Bernstein et al. 2018, Algorithms 1-2 ----------------------------------------------
def signsgd(params, grads, state, t, *, lr=1e-3):
    for p, g in zip(params, grads):
        p -= lr * np.sign(g)


def signum(params, grads, state, t, *, lr=1e-3, momentum=0.9):
    bs = _zeros(state, "momentum_buffer", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        bs[j] = momentum * bs[j] + (1 - momentum) * g
        p -= lr * np.sign(bs[j])


# -- Adafactor (unfactored): Shazeer & Stern 2018, Algorithm 3 with update clipping ----------------------
def adafactor(params, grads, state, t, *, lr=1e-2, decay_rate=0.8, clipping_threshold=1.0, eps=1e-30,
              min_scale=1e-3, weight_decay_rate=0.0):
    vs = _zeros(state, "v", params)
    beta2 = 1 - t ** (-decay_rate)
    for j, (p, g) in enumerate(zip(params, grads)):
        vs[j] = beta2 * vs[j] + (1 - beta2) * (g * g + eps)
        u = g / np.sqrt(vs[j])
        u = u / max(1.0, _rms(u) / clipping_threshold)
        p[...] = p - lr * max(_rms(p), min_scale) * u - weight_decay_rate * p


# -- AdaBelief, rectified: Zhuang et al. 2020 with RAdam's rectification (Liu et al. 2020) --------------
def adabelief_rectified(params, grads, state, t, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0,
                        n_sma_threshold=5.0, degenerated_to_sgd=True):
    b1, b2 = betas
    ms, ss = _zeros(state, "exp_avg", params), _zeros(state, "exp_avg_var", params)
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
    for j, (p, g) in enumerate(zip(params, grads)):
        p *= 1 - lr * weight_decay
        ms[j] = b1 * ms[j] + (1 - b1) * g
        ss[j] = b2 * ss[j] + (1 - b2) * (g - ms[j]) ** 2 + eps
        if rho >= n_sma_threshold:
            r = math.sqrt((1 - b2**t) * (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            p -= lr * r / (1 - b1**t) * ms[j] / (np.sqrt(ss[j]) + eps)
        elif degenerated_to_sgd:
            p -= lr / (1 - b1**t) * ms[j]


# -- Tiger: Su 2023 -----------------------------------------------------------------------------------
def tiger(params, grads, state, t, *, lr=1e-3, beta=0.965, weight_decay=0.01):
    ms = _zeros(state, "exp_avg", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        ms[j] = beta * ms[j] + (1 - beta) * g
        p[...] = p * (1 - lr * weight_decay) - lr * np.sign(ms[j])


# -- MADGRAD: Defazio & Jelassi 2021, Algorithm 1 (λ_k = (α + ε)√(k+1), as the authors' code) -----------
def madgrad(params, grads, state, t, *, lr=1e-2, momentum=0.9, weight_decay=0.0, eps=1e-6):
    gs, ss, x0 = _zeros(state, "grad_sum_sq", params), _zeros(state, "s", params), _copy(state, "x0", params)
    lam = (lr + eps) * math.sqrt(t)
    for j, (p, g) in enumerate(zip(params, grads)):
        g = g + weight_decay * p
        gs[j] = gs[j] + lam * g * g
        ss[j] = ss[j] + lam * g
        z = x0[j] - ss[j] / (np.cbrt(gs[j]) + eps)
        p[...] = momentum * p + (1 - momentum) * z


# -- diffGrad: Dubey et al. 2019, Algorithm 1 (friction ξ = sigmoid(|g_{t−1} − g_t|)) -------------------
def diffgrad(params, grads, state, t, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    b1, b2 = betas
    ms, vs = _zeros(state, "exp_avg", params), _zeros(state, "exp_avg_sq", params)
    prev = _zeros(state, "previous_grad", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        p *= 1 - lr * weight_decay
        ms[j] = b1 * ms[j] + (1 - b1) * g
        vs[j] = b2 * vs[j] + (1 - b2) * g * g
        xi = 1 / (1 + np.exp(-np.abs(prev[j] - g)))
        p -= lr * math.sqrt(1 - b2**t) / (1 - b1**t) * xi * ms[j] / (np.sqrt(vs[j] + 1e-15) + eps)
        prev[j] = g.copy()


# -- AdEMAMix: Pagliardini et al. 2024, Algorithm 1 with the α / β3 warm-up schedulers ------------------
def ademamix(params, grads, state, t, *, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha_beta3=0.0,
             eps=1e-8, weight_decay=0.0):
    b1, b2, b3 = betas
    if t_alpha_beta3 > 0:
        a_t = min(t * alpha / t_alpha_beta3, alpha)
        f = t / t_alpha_beta3
        b3_t = min(math.exp(math.log(b1) * math.log(b3) / ((1 - f) * math.log(b3) + f * math.log(b1))), b3)
    else:
        a_t, b3_t = alpha, b3
    ms, vs = _zeros(state, "exp_avg", params), _zeros(state, "exp_avg_sq", params)
    slow = _zeros(state, "exp_avg_slow", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        g = g + weight_decay * p
        ms[j] = b1 * ms[j] + (1 - b1) * g
        vs[j] = b2 * vs[j] + (1 - b2) * g * g
        slow[j] = b3_t * slow[j] + (1 - b3_t) * g
        p -= lr * (ms[j] / (1 - b1**t) + a_t * slow[j]) / (np.sqrt(vs[j] / (1 - b2**t)) + eps)


# -- StableAdamW: Wortsman et al. 2023, Algorithm 2 (update clipping by RMS(g²/v)) ----------------------
def stable_adamw(params, grads, state, t, *, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2):
    b1, b2 = betas
    hb1 = b1 * (1 - b1 ** (t - 1)) / (1 - b1**t)
    hb2 = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
    ms, vs = _zeros(state, "exp_avg", params), _zeros(state, "exp_avg_sq", params)
    for j, (p, g) in enumerate(zip(params, grads)):
        ms[j] = hb1 * ms[j] + (1 - hb1) * g
        vs[j] = hb2 * vs[j] + (1 - hb2) * g * g
        lr_t = lr / max(1.0, math.sqrt(float(np.mean(g * g / np.maximum(vs[j], eps**2)))))
        p[...] = p * (1 - lr_t * weight_decay) - lr_t * ms[j] / (np.sqrt(vs[j]) + eps)


# -- Fromage: Bernstein et al. 2020, Algorithm 1 ---------------------------------------------------------
def fromage(params, grads, state, t, *, lr=1e-2, min_norm=1e-6):
    for p, g in zip(params, grads):
        ratio = max(np.linalg.norm(p), min_norm) / max(np.linalg.norm(g), min_norm)
        p[...] = (p - lr * ratio * g) / math.sqrt(1 + lr * lr)
