"""An independent float64 numpy model of an MoE layer, the oracle of the tests.

Written from the rules in include/dmoe.h, not from dmoe's code:
  scores = softmax(logits) or sigmoid(logits), with NaN logits as -FLT_MAX and
           +-inf as +-FLT_MAX;
  choice = scores + correction_bias (used only to pick experts);
  grouped: a group's score is the sum of its best two choices (best one for
           groups of one); the topk_group best groups stay, the rest are masked;
  top-k over choice, ties to the lower index, in rank order;
  weights = picked scores, divided by their sum when renormalize (unless the
           sum is 0), times routed_scaling_factor, stored as float32;
  FFN_e(x) = w2_e @ (silu(w13_e[:F] @ x) * (w13_e[F:] @ x));
  y = sum_k w_k FFN_{id_k}(x) + [sigmoid(gate . x)] * sum_s FFN^shared_s(x).
"""
import numpy as np

FLT_MAX = float(np.finfo(np.float32).max)


def f64(a):
    return np.asarray(a).astype(np.float64)


def sanitize(logits):
    z = f64(logits).copy()
    z[np.isnan(z)] = -FLT_MAX
    return np.clip(z, -FLT_MAX, FLT_MAX)


def _rank(values, candidates, k):
    """The k best of candidates by value, ties to the lower index, in rank order."""
    order = sorted(candidates, key=lambda i: (-values[i], i))
    return order[:k]


def route(logits, top_k, renormalize=True, scoring="softmax", n_group=0, topk_group=0,
          scale=1.0, bias=None):
    """(weights (T, K) float32, ids (T, K) int32) from logits (T, E)."""
    z = sanitize(logits)
    T, E = z.shape
    if scoring == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        scores = e / e.sum(axis=1, keepdims=True)
    else:
        scores = 1.0 / (1.0 + np.exp(-z))
    choice = scores + (f64(bias)[None, :] if bias is not None else 0.0)
    ids = np.zeros((T, top_k), np.int32)
    weights = np.zeros((T, top_k), np.float32)
    for t in range(T):
        cand = list(range(E))
        if n_group and n_group > 1:
            per = E // n_group
            gs = []
            for g in range(n_group):
                members = list(range(g * per, (g + 1) * per))
                best = _rank(choice[t], members, min(2, per))
                gs.append(sum(choice[t][i] for i in best))
            kept = _rank(gs, list(range(n_group)), topk_group)
            cand = [e for g in sorted(kept) for e in range(g * per, (g + 1) * per)]
        picked = _rank(choice[t], cand, top_k)
        w = scores[t][picked]
        s = w.sum()
        if renormalize and s > 0:
            w = w / s
        ids[t] = picked
        weights[t] = (w * float(np.float32(scale))).astype(np.float32)
    return weights, ids


def silu(v):
    return v / (1.0 + np.exp(-v))


def ffn(x, w13, w2):
    """x (H,), w13 (2F, H), w2 (H, F), all float64."""
    F = w13.shape[0] // 2
    h = silu(w13[:F] @ x) * (w13[F:] @ x)
    return w2 @ h


def experts(x, w13, w2, weights, ids, shared_w13=None, shared_w2=None, shared_gate=None):
    """y (T, H) float64 from the stored values of every input."""
    x, w13, w2 = f64(x), f64(w13), f64(w2)
    weights = f64(np.asarray(weights).astype(np.float32))
    T, H = x.shape
    y = np.zeros((T, H))
    for t in range(T):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            y[t] += weights[t, k] * ffn(x[t], w13[e], w2[e])
        if shared_w13 is not None:
            g = 1.0
            if shared_gate is not None:
                g = 1.0 / (1.0 + np.exp(-(f64(shared_gate).reshape(-1) @ x[t])))
            for s in range(shared_w13.shape[0]):
                y[t] += g * ffn(x[t], f64(shared_w13[s]), f64(shared_w2[s]))
    return y


def forward(x, router, w13, w2, top_k, **routing):
    """y (T, H) float64 of a whole layer; routing from f64(x) @ f64(router).T."""
    shared = {k: routing.pop(k) for k in ("shared_w13", "shared_w2", "shared_gate")
              if k in routing}
    logits = f64(x) @ f64(router).T
    weights, ids = route(logits, top_k, **routing)
    return experts(x, w13, w2, weights, ids, **shared), weights, ids


def rel_l2(got, want):
    got, want = f64(got), f64(want)
    den = np.linalg.norm(want)
    return np.linalg.norm(got - want) / (den if den > 0 else 1.0)
