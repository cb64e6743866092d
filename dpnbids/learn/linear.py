"""The linear baselines (linear SVM, L2 logistic regression, prior-only) computed in kernel
space, so a whole cross-validation, and 1,000 label permutations of it, cost seconds.

The baselines see exactly what the CNN sees: the fold's selected maps, z-scored per channel
with the mean and SD of the outer-training subjects
(:meth:`dpnbids.learn.scaling.ChannelScaler.fit`), flattened over the in-brain voxels.
With S subjects and V x C features (S << V x C), a linear model with an L2 penalty only
ever depends on inner products (the representer theorem), so dpnbids

1. computes once, per channel c, the Gram matrix ``G_c = X_c X_c^T`` of the raw maps, their
   sums and sums of squares over the support (:class:`GramCache`);
2. turns them, for any fold's scaler and channel selection, into the kernel of the scaled
   features, ``K = sum_c (G_c - m_c (s_c 1^T + 1 s_c^T) + m_c^2 V) / sd_c^2``
   (:meth:`GramCache.kernel`), which equals ``Z Z^T`` of the explicit scaled features;
3. fits the models of scikit-learn's ``LinearSVC`` / ``LogisticRegression`` (same objectives,
   solved exactly by Newton's method: :func:`svm_newton`, :func:`logistic_newton`) on the
   empirical kernel map
   ``F = U diag(sqrt(lambda))`` of the training kernel ``K_tt = U diag(lambda) U^T``, and scores
   test subjects with ``F_test = K_test,train U diag(1/sqrt(lambda))``. The objective (loss of
   ``w.x + b`` plus ``||w||^2 / 2``) has the same value for the same decision function in
   both spaces, so the fitted decision values are the ones the explicit features give, up
   to the solvers' tolerance.
"""
from __future__ import annotations

import numpy as np

from dpnbids.exceptions import InputError
from dpnbids.learn.scaling import ChannelScaler, moments_from_sums

#: The baselines dpnbids fits beside the CNN.
BASELINES = ("svm", "logreg", "majority")


class GramCache:
    """Per-channel Gram matrices, sums and sums of squares of maps ``x`` (S, X, Y, Z, C).

    The support is the voxels where any subject has any non-zero map. When every subject's
    every map is non-zero on the whole support (stage-2 maps and BOLD inside a mask are),
    every fold's scaler support (:meth:`dpnbids.learn.scaling.ChannelScaler.fit`) is this
    support and :meth:`kernel` is exact; ``exact_support`` records whether that holds.
    """

    def __init__(self, x):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 5:
            raise InputError(f"GramCache expects maps (subjects, X, Y, Z, channels); got "
                             f"shape {x.shape}")
        s, c = x.shape[0], x.shape[-1]
        flat = x.reshape(s, -1, c)
        nonzero = flat != 0
        support = nonzero.any(axis=(0, 2))
        flat = flat[:, support, :]
        self.exact_support = bool(nonzero[:, support, :].all())
        self.n_voxels = int(support.sum())
        self.gram = np.empty((c, s, s))
        for k in range(c):
            xk = flat[:, :, k].astype(np.float64)
            self.gram[k] = xk @ xk.T
        self.sums = flat.sum(axis=1, dtype=np.float64)          # (S, C)
        self.sumsq = np.einsum("svc,svc->sc", flat, flat, dtype=np.float64)
        self._x = None if self.exact_support else x

    def scaler(self, train_idx, channels):
        """Per-channel mean and SD over the training subjects' support voxels, as
        :meth:`ChannelScaler.fit` computes them (:func:`moments_from_sums`)."""
        tr = np.asarray(train_idx, dtype=int)
        ch = np.asarray(channels, dtype=int)
        return moments_from_sums(self.sums[np.ix_(tr, ch)].sum(0),
                                 self.sumsq[np.ix_(tr, ch)].sum(0), tr.size * self.n_voxels)

    def kernel(self, train_idx, channels, rows=None) -> np.ndarray:
        """Kernel of the fold-scaled features between ``rows`` (default all) and all subjects."""
        ch = np.asarray(channels, dtype=int)
        rows = np.arange(self.sums.shape[0]) if rows is None else np.asarray(rows, dtype=int)
        if not self.exact_support:  # explicit features: the fold's support is its own
            return self._explicit_kernel(train_idx, ch, rows)
        mean, sd = self.scaler(train_idx, ch)
        w = 1.0 / sd ** 2
        g = np.tensordot(w, self.gram[ch][:, rows, :], axes=1)
        s = self.sums[:, ch]
        g -= (s[rows] * (mean * w)) .sum(1)[:, None]
        g -= (s * (mean * w)).sum(1)[None, :]
        g += float(np.sum(mean ** 2 * w)) * self.n_voxels
        return g

    @staticmethod
    def of_fold(deconf: dict, y, ids, outer, test):
        """A cache of one fold's own (deconfounded) inputs ``deconf["outer"]`` and
        ``deconf["test"]``, and the arguments that index it: the fold's subjects renumbered
        (outer training first, then test), their labels and IDs, and all its channels."""
        n = len(outer)
        local = np.arange(n + len(test))
        return (GramCache(np.concatenate([deconf["outer"], deconf["test"]])), local[:n],
                local[n:], np.concatenate([y[outer], y[test]]),
                [ids[i] for i in outer] + [ids[i] for i in test],
                np.arange(deconf["outer"].shape[-1]))

    def _explicit_kernel(self, train_idx, ch, rows):
        """``Z Z^T`` of the features scaled exactly as the CV scales them."""
        x = self._x[..., ch]
        z = ChannelScaler.fit(x[np.asarray(train_idx, dtype=int)]).transform(x)
        z = z.reshape(z.shape[0], -1).astype(np.float64)
        return z[rows] @ z.T


def _kernel_eigen(k_train, rtol: float = 1e-10):
    """Eigenvectors and square-rooted eigenvalues of the training kernel's range."""
    lam, u = np.linalg.eigh((k_train + k_train.T) / 2.0)
    keep = lam > rtol * max(lam.max(), 0.0)
    return u[:, keep], np.sqrt(lam[keep])


def kernel_features(k_train, k_test, *, rtol: float = 1e-10):
    """Empirical kernel map of a training kernel and the matching test features."""
    u, root = _kernel_eigen(k_train, rtol)
    if not root.size:
        return np.zeros((k_train.shape[0], 1)), np.zeros((k_test.shape[0], 1))
    return u * root, (k_test @ u) / root


def primal_weights(name: str, z_train, y_train) -> tuple[np.ndarray, float]:
    """Weights ``w`` (over the flattened features) and intercept of baseline ``name`` (svm
    or logreg) fitted on explicit features ``z_train`` (S, ...), through the kernel: the
    fitted ``w_f`` on the kernel map ``F = U sqrt(lambda)`` is ``w = Z^T U w_f / sqrt(lambda)``.
    The same solver and objective as the CV's baseline, so its decision values are the CV's."""
    z = np.asarray(z_train, dtype=np.float64).reshape(len(z_train), -1)
    u, root = _kernel_eigen(z @ z.T)
    solver = {"svm": svm_newton, "logreg": logistic_newton}.get(name)
    if solver is None:
        raise InputError(f"primal weights exist for svm and logreg, not {name!r}")
    if not root.size:
        return np.zeros(z.shape[1]), 0.0
    w_f, b = solver(u * root, np.asarray(y_train, dtype=int), C=1.0)
    return z.T @ (u @ (w_f / root)), float(b)


def _newton(a, value_grad_hess, reg, *, tol: float = 1e-12, max_iter: int = 100):
    """Minimise a smooth convex loss of ``a @ theta`` plus ``sum(reg * theta^2) / 2`` by
    Newton's method with backtracking; ``value_grad_hess(margins) -> (loss, dloss, d2loss)``
    gives the loss and its first two derivatives per sample."""
    theta = np.zeros(a.shape[1])

    def objective(th):
        return value_grad_hess(a @ th)[0] + 0.5 * np.sum(reg * th ** 2)

    value = objective(theta)
    for _ in range(max_iter):
        _, d1, d2 = value_grad_hess(a @ theta)
        grad = a.T @ d1 + reg * theta
        hess = (a.T * d2) @ a + np.diag(reg) + 1e-12 * np.eye(a.shape[1])
        step = np.linalg.solve(hess, grad)
        decrement = float(grad @ step)
        if decrement / 2.0 <= tol * max(1.0, abs(value)):
            break
        size = 1.0
        while size > 1e-10:
            cand = theta - size * step
            new = objective(cand)
            if new <= value - 1e-4 * size * decrement:
                theta, value = cand, new
                break
            size *= 0.5
        else:
            break
    return theta


def _design(f, y):
    f = np.asarray(f, dtype=float)
    return np.hstack([f, np.ones((f.shape[0], 1))]), np.where(np.asarray(y) == 1, 1.0, -1.0)


def logistic_newton(f, y, C: float = 1.0):
    """L2-penalised logistic regression, ``C * sum(log-loss) + ||w||^2 / 2`` with an
    unpenalised intercept (scikit-learn's ``LogisticRegression(C=C)`` objective). Newton's
    method converges in a few steps on a few dozen kernel features, where L-BFGS needs
    hundreds on these badly scaled, nearly separable problems. Returns (w, b)."""
    a, t = _design(f, y)

    def loss(m):
        z = t * m
        sig = 0.5 * (1.0 + np.tanh(-0.5 * z))  # sigmoid(-z), overflow-free
        return C * np.sum(np.logaddexp(0.0, -z)), -C * t * sig, C * sig * (1.0 - sig)

    reg = np.ones(a.shape[1])
    reg[-1] = 0.0
    theta = _newton(a, loss, reg)
    return theta[:-1], float(theta[-1])


def svm_newton(f, y, C: float = 1.0):
    """Linear SVM with the squared hinge loss, ``C * sum(max(0, 1 - t m)^2) + ||w||^2 / 2 +
    b^2 / 2`` (scikit-learn's ``LinearSVC(C=C)``: liblinear penalises the intercept as a
    constant feature), by primal Newton (Keerthi & DeCoste 2005). Returns (w, b)."""
    a, t = _design(f, y)

    def loss(m):
        slack = np.maximum(0.0, 1.0 - t * m)
        return C * np.sum(slack ** 2), -2.0 * C * t * slack, 2.0 * C * (slack > 0)

    theta = _newton(a, loss, np.ones(a.shape[1]))
    return theta[:-1], float(theta[-1])


def fit_decision(name: str, f_train, y_train, f_test) -> np.ndarray:
    """Decision values of baseline ``name`` on ``f_test`` (logits for logreg, margins for svm,
    the log prior odds for the prior-only ``majority``)."""
    y = np.asarray(y_train, dtype=int)
    if name == "svm":
        w, b = svm_newton(f_train, y, C=1.0)
        return f_test @ w + b
    if name == "logreg":
        w, b = logistic_newton(f_train, y, C=1.0)
        return f_test @ w + b
    if name == "majority":
        n_pos, n = float((y == 1).sum()), float(y.size)
        prior = np.clip(n_pos / max(n, 1.0), 1e-6, 1 - 1e-6)
        return np.full(len(f_test), np.log(prior / (1 - prior)))
    raise InputError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")


def decision_values(gram: GramCache, name, train_idx, test_idx, y, channels, *,
                    scaler_idx=None) -> np.ndarray:
    """Fit ``name`` on ``train_idx`` (features scaled on ``scaler_idx``, default the training
    subjects) and return its decision values on ``test_idx``."""
    tr = np.asarray(train_idx, dtype=int)
    te = np.asarray(test_idx, dtype=int)
    scale_on = tr if scaler_idx is None else np.asarray(scaler_idx, dtype=int)
    if name == "majority":
        return fit_decision(name, np.zeros((tr.size, 1)), y[tr], np.zeros((te.size, 1)))
    k = gram.kernel(scale_on, channels, rows=np.concatenate([tr, te]))
    f_tr, f_te = kernel_features(k[:tr.size][:, tr], k[tr.size:][:, tr])
    return fit_decision(name, f_tr, y[tr], f_te)


def inner_decision_values(gram: GramCache, name, outer_idx, y, channels, seed,
                          n_splits: int = 5) -> np.ndarray:
    """Cross-validated decision values of every outer-training subject (stratified inner
    folds inside ``outer_idx``; the scaler is the outer training fold's), for calibration
    and threshold choice without touching the outer test subjects."""
    from sklearn.model_selection import StratifiedKFold

    outer = np.asarray(outer_idx, dtype=int)
    yo = np.asarray(y, dtype=int)[outer]
    k = int(min(n_splits, np.bincount(yo, minlength=2).min()))
    out = np.zeros(outer.size)
    if k < 2:  # too few of one class for inner folds: the training fit's own values
        return decision_values(gram, name, outer, outer, y, channels)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=int(seed) % (2**31))
    kern = None if name == "majority" else gram.kernel(outer, channels, rows=outer)[:, outer]
    for itr, ite in skf.split(outer, yo):
        if kern is None:
            out[ite] = fit_decision(name, np.zeros((itr.size, 1)), yo[itr],
                                    np.zeros((ite.size, 1)))
            continue
        f_tr, f_te = kernel_features(kern[np.ix_(itr, itr)], kern[np.ix_(ite, itr)])
        out[ite] = fit_decision(name, f_tr, yo[itr], f_te)
    return out


def fold_auc(y, scores) -> float:
    """AUC (Mann-Whitney, ties counted one half) of one fold; NaN with a single class."""
    y = np.asarray(y, dtype=int)
    s = np.asarray(scores, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    if not pos.size or not neg.size:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def permutation_nulls(gram: GramCache, y, *, splits_fn, select_fn_for, n_permutations: int,
                      models=("svm", "logreg"), random_state=None) -> dict:
    """Null distributions of the linear baselines' fold-mean AUC under label permutation.

    Each permutation reruns the whole cross-validation on permuted labels: new outer folds
    (``splits_fn(y_perm)`` -> (outer-training, test) index arrays), the in-fold selection
    (``select_fn_for(y_perm)`` -> a callable of the outer-training indices, or None), the
    fold's scaling and every model's fit. The fold-mean AUC is the statistic because the
    in-fold calibration, being monotone within a fold, cannot change it, so it needs no
    inner refits.
    """
    y = np.asarray(y, dtype=int)
    rng = np.random.default_rng(random_state)
    null = {m: np.empty(int(n_permutations)) for m in models}
    all_channels = np.arange(gram.gram.shape[0])
    for b in range(int(n_permutations)):
        yp = rng.permutation(y)
        select = select_fn_for(yp)
        aucs = {m: [] for m in models}
        for outer, te in splits_fn(yp):
            ch = all_channels if select is None else np.asarray(select(np.sort(outer)), int)
            k = gram.kernel(outer, ch, rows=np.concatenate([outer, te]))
            f_tr, f_te = kernel_features(k[:outer.size][:, outer], k[outer.size:][:, outer])
            for m in models:
                aucs[m].append(fold_auc(yp[te], fit_decision(m, f_tr, yp[outer], f_te)))
        for m in models:
            null[m][b] = np.nanmean(aucs[m])
    return null
