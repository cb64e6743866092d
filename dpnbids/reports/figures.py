"""Report figures: pure functions returning embeddable PNG data URIs.

Every function returns a string ``"data:image/png;base64,..."`` that can be
placed directly in an ``<img src=...>`` attribute, so the HTML reports are
self-contained (no external files, no network, no JavaScript). Matplotlib is
forced onto the non-interactive Agg backend.
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dpnbids.exceptions import InputError  # noqa: E402

__all__ = [
    "fig_to_data_uri",
    "plot_registration",
    "plot_carpet",
    "plot_confounds",
    "plot_motion",
    "plot_component_gallery",
    "plot_roc",
    "plot_confusion",
    "plot_learning_curves",
    "plot_reliability",
    "plot_decision_curve",
    "plot_permutation_nulls",
    "is_leaky",
]

_MOTION_COLS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def fig_to_data_uri(fig, *, dpi=80) -> str:
    """Render a matplotlib Figure to a base64 PNG data URI and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _load(img):
    if isinstance(img, nib.spatialimages.SpatialImage):
        return img
    return nib.load(str(img))


def _display_to_uri(display, fig) -> str:
    uri = fig_to_data_uri(fig)
    display.close()
    return uri


def _display_grid(img, *, max_voxels=4_000_000):
    """A 3D image on an axis-aligned grid that nilearn can slice without resampling.

    nilearn reorders oblique images with a cubic spline over the full grid (about
    6 s for a 0.7 mm T1w). For display, an oblique or very large image is first
    resampled linearly onto an axis-aligned grid with voxels no smaller than
    needed to keep at most ``max_voxels`` voxels (and never finer than 1 mm).
    """
    from nilearn import image

    aff = img.affine[:3, :3]
    oblique = np.count_nonzero(np.abs(aff) > 1e-6 * np.abs(aff).max()) > 3
    n_vox = int(np.prod(img.shape[:3]))
    if not oblique and n_vox <= max_voxels:
        return img
    vox = np.sqrt((aff ** 2).sum(axis=0))
    extent = n_vox * float(np.prod(vox))  # volume in mm^3
    size = max(1.0, float(vox.min()), (extent / max_voxels) ** (1 / 3))
    return image.resample_img(img, target_affine=np.eye(3) * size, interpolation="linear",
                              force_resample=True, copy_header=True)


def plot_registration(moving_img, fixed_img, *, title="") -> str:
    """Fixed image with the edges of the moving image, in three views.

    Parameters
    ----------
    moving_img, fixed_img : path or nibabel image (3D; 4D is averaged)
    title : str

    Returns
    -------
    str
        PNG data URI.
    """
    from nilearn import image, plotting

    moving = _load(moving_img)
    fixed = _load(fixed_img)
    if moving.ndim == 4:
        moving = image.mean_img(moving, copy_header=True)
    if fixed.ndim == 4:
        fixed = image.mean_img(fixed, copy_header=True)
    fixed = _display_grid(fixed)
    moving = _display_grid(moving)
    fig = plt.figure(figsize=(9, 3))
    display = plotting.plot_anat(
        fixed, display_mode="ortho", figure=fig, title=title or None, draw_cross=False
    )
    display.add_edges(moving, color="r")
    return _display_to_uri(display, fig)


def plot_carpet(bold_img, mask_img, *, tr, confounds=None, max_rows=20_000) -> str:
    """Carpet plot of the BOLD series within ``mask_img`` (Power 2017).

    Each row is one in-mask voxel's time series, linearly detrended and z-scored
    over time (grey scale, -2 to 2); rows follow the voxel order of the image, so
    neighbouring rows are neighbouring voxels. At most ``max_rows`` voxels are
    shown, taken at an even stride (a figure has far fewer pixel rows than a
    template-space mask has voxels). Uncompressed images are memory-mapped, so
    only the in-mask voxels are read. ``confounds`` is accepted for API symmetry
    and unused (FD and DVARS are drawn by :func:`plot_confounds`).
    """
    bold = _load(bold_img)
    if len(bold.shape) != 4:
        raise InputError(
            f"plot_carpet needs a 4D BOLD image; received shape {bold.shape}. "
            "Pass the preprocessed 4D series."
        )
    n_t = bold.shape[3]
    if mask_img is not None:
        mask = np.asarray(_load(mask_img).dataobj) > 0
        if mask.shape != bold.shape[:3]:
            raise InputError(f"the carpet-plot mask grid {mask.shape} does not match the BOLD "
                             f"grid {bold.shape[:3]}; pass the mask of this series.")
    else:
        mask = np.ones(bold.shape[:3], dtype=bool)
    idx = np.flatnonzero(mask.ravel(order="F"))
    if idx.size == 0:
        raise InputError("the carpet-plot mask is empty; pass the brain mask of this series.")
    idx = idx[:: max(1, int(np.ceil(idx.size / max_rows)))]
    data = np.asanyarray(bold.dataobj)
    rows = np.asarray(data.reshape(-1, n_t, order="F")[idx], dtype=np.float64)
    t = np.arange(n_t, dtype=np.float64)
    t -= t.mean()
    rows -= rows.mean(axis=1, keepdims=True)
    if n_t > 1:
        rows -= np.outer(rows @ t / (t @ t), t)
    sd = rows.std(axis=1, keepdims=True)
    rows /= np.where(sd > 0, sd, 1)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.imshow(rows, aspect="auto", cmap="gray", vmin=-2, vmax=2, interpolation="nearest",
              extent=(0, n_t * float(tr), rows.shape[0], 0))
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"voxels ({rows.shape[0]} of {int(mask.sum())})", fontsize=8)
    ax.set_yticks([])
    return fig_to_data_uri(fig)


def plot_confounds(
    confounds_df, columns=("framewise_displacement", "dvars"), *, tr, fd_threshold=0.5
) -> str:
    """Line traces of the confound columns against time (s); FD threshold drawn."""
    df = confounds_df
    cols = [c for c in columns if c in df.columns]
    n = max(len(cols), 1)
    fig, axes = plt.subplots(n, 1, figsize=(9, 1.6 * n), sharex=True, squeeze=False)
    t = np.arange(len(df)) * float(tr)
    if not cols:
        axes[0, 0].text(0.5, 0.5, "no confound columns found", ha="center", va="center")
    for ax, c in zip(axes[:, 0], cols):
        ax.plot(t, pd.to_numeric(df[c], errors="coerce").to_numpy(), lw=0.8)
        ax.set_ylabel(c.replace("_", " "), fontsize=8)
        if c == "framewise_displacement" and fd_threshold is not None:
            ax.axhline(fd_threshold, color="r", ls="--", lw=0.8)
    axes[-1, 0].set_xlabel("time (s)")
    return fig_to_data_uri(fig)


def plot_scree(spectrum, criterion, n_components, *, method="lap", cap=None) -> str:
    """Scree plot of the eigenvalue spectrum and the model-order criterion, choice marked."""
    spec = np.asarray(spectrum, dtype=float)
    crit = np.asarray(criterion, dtype=float)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 2.8))
    a1.plot(np.arange(1, spec.size + 1), spec, "o-", ms=3, lw=0.8)
    a1.set_yscale("log")
    a1.set_xlabel("component")
    a1.set_ylabel("normalised eigenvalue")
    a1.set_title("eigenvalue spectrum", fontsize=9)
    ks = np.arange(crit.size)
    a2.plot(ks, crit, "o-", ms=3, lw=0.8)
    a2.set_xlabel("number of components k")
    a2.set_ylabel(f"{method} criterion (0 = best)", fontsize=8)
    a2.set_title("model-order criterion (mean over runs)", fontsize=9)
    for a in (a1, a2):
        a.axvline(n_components, color="r", ls="--", lw=0.9, label=f"chosen: {n_components}")
        if cap is not None:
            a.axvline(cap, color="0.5", ls=":", lw=0.9, label=f"cap: {cap}")
    a2.legend(fontsize=7)
    fig.tight_layout()
    return fig_to_data_uri(fig)


def plot_motion(confounds_df) -> str:
    """Six rigid-body motion traces (translations in mm, rotations in rad)."""
    df = confounds_df
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 3.2), sharex=True)
    for c in _MOTION_COLS[:3]:
        if c in df.columns:
            a1.plot(df[c].to_numpy(dtype=float), lw=0.8, label=c)
    for c in _MOTION_COLS[3:]:
        if c in df.columns:
            a2.plot(df[c].to_numpy(dtype=float), lw=0.8, label=c)
    a1.set_ylabel("translation (mm)", fontsize=8)
    a2.set_ylabel("rotation (rad)", fontsize=8)
    a2.set_xlabel("volume")
    for a in (a1, a2):
        if a.lines:
            a.legend(fontsize=7, ncol=3, loc="upper right")
    return fig_to_data_uri(fig)


def _fmt(v, spec=".3g"):
    try:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "n/a"
        return format(float(v), spec)
    except (TypeError, ValueError):
        return str(v)


def _first(get, *keys, default=None):
    """The first of ``keys`` the row holds with a value (NaN and None count as absent)."""
    for key in keys:
        value = get(key, None)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        return value
    return default


def component_title(row) -> str:
    """Title string for one row of the components table.

    Reads the columns the group level writes (``component``, ``network``,
    ``stability``, ``t``, ``p``, ``r``; :func:`dpnbids.analysis.networks.match_networks`)
    and the older names ``index`` and ``network_label``/``label``. Stability is
    n/a when ICA ran once (no ICASSO repeats).
    """
    get = row.get if hasattr(row, "get") else (lambda k, d=None: d)
    idx = _first(get, "component", "index", default="?")
    if isinstance(idx, (float, np.floating)) and float(idx).is_integer():
        idx = int(idx)
    label = _first(get, "network", "network_label", "label", default="unlabelled")
    return (
        f"#{idx} {label} | stab {_fmt(get('stability'), '.2f')} | "
        f"t {_fmt(get('t'), '.2f')} p {_fmt(get('p'), '.3f')} r {_fmt(get('r'), '.2f')}"
    )


def is_selected(row) -> bool:
    """Whether a components-table row is selected (SSC, descriptive on all subjects)."""
    get = row.get if hasattr(row, "get") else (lambda k, d=None: d)
    value = _first(get, "selected_descriptive_all_subjects", "selected", default=False)
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def plot_component_gallery(components_img, components_df=None, *, bg_img=None) -> list[str]:
    """One stat-map figure per component, titled with label and statistics.

    Parameters
    ----------
    components_img : path or 4D nibabel image (one volume per component)
    components_df : DataFrame, optional
        Rows in component order: the group level's components table
        (``component``, ``network``, ``stability``, ``t``, ``p``, ``r``,
        ``selected_descriptive_all_subjects``); see :func:`component_title`.
    bg_img : path or image, optional
        Background; without it a glass brain is drawn.

    Returns
    -------
    list of str
        PNG data URIs, one per component.
    """
    from nilearn import image, plotting

    comps = _load(components_img)
    if comps.ndim == 3:
        comps = nib.Nifti1Image(np.asarray(comps.dataobj)[..., None], comps.affine)
    if comps.ndim != 4:
        raise InputError(f"components_img must be 4D; received shape {comps.shape}.")
    n = comps.shape[3]
    out = []
    for k in range(n):
        vol = image.index_img(comps, k)
        if components_df is not None and k < len(components_df):
            row = components_df.iloc[k].to_dict()
        else:
            row = {"index": k}
        title = component_title(row)
        fig = plt.figure(figsize=(7, 2.6))
        data = np.asarray(vol.dataobj, dtype=float)
        vmax = float(np.nanmax(np.abs(data))) or 1.0
        if bg_img is None:
            display = plotting.plot_glass_brain(
                vol, figure=fig, title=title, plot_abs=False, colorbar=False, vmax=vmax,
                threshold=0.3 * vmax,
            )
        else:
            display = plotting.plot_stat_map(
                vol, bg_img=bg_img, figure=fig, title=title, display_mode="ortho",
                colorbar=False, vmax=vmax, threshold=0.3 * vmax, draw_cross=False,
            )
        out.append(_display_to_uri(display, fig))
    return out


def is_leaky(df: pd.DataFrame) -> pd.Series:
    """Boolean per row: ``leaky`` column if present, else 'leaky' in ``input_set``."""
    flag = pd.Series(False, index=df.index)
    if "leaky" in df.columns:
        flag |= df["leaky"].fillna(False).astype(bool)
    if "input_set" in df.columns:
        flag |= df["input_set"].astype(str).str.lower().str.contains("leaky")
    return flag


def _check_pred(df):
    need = {"input_set", "model", "true_label", "probability"}
    missing = need - set(df.columns)
    if missing:
        raise InputError(
            f"predictions table lacks columns {sorted(missing)}; received "
            f"{list(df.columns)}. Expected participant, repeat, fold, input_set, model, "
            "true_label, probability."
        )


def _label_of(input_set, leaky):
    return f"{input_set} [LEAKY]" if leaky else str(input_set)


def plot_roc(predictions_df) -> str:
    """Pooled out-of-fold ROC curves: one panel per input set, one line per model."""
    from sklearn.metrics import roc_auc_score, roc_curve

    df = predictions_df.copy()
    _check_pred(df)
    df["_leaky"] = is_leaky(df)
    sets = list(dict.fromkeys(df["input_set"].astype(str)))
    n = max(len(sets), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.3), squeeze=False, sharey=True)
    axes[0, 0].set_ylabel("sensitivity")
    for ax, s in zip(axes[0], sets):
        sub = df[df["input_set"].astype(str) == s]
        for model, g in sub.groupby("model", sort=False):
            y = g["true_label"].to_numpy(dtype=int)
            p = g["probability"].to_numpy(dtype=float)
            if len(np.unique(y)) < 2:
                continue
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, lw=1.2, label=f"{model} AUC={roc_auc_score(y, p):.2f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        leaky = bool(sub["_leaky"].any())
        ax.set_title(_label_of(s, leaky), color="crimson" if leaky else "black", fontsize=9)
        ax.set_xlabel("1 - specificity")
        ax.legend(fontsize=7, loc="lower right")
    return fig_to_data_uri(fig)


def _panels(n_items: int, size: tuple[float, float], max_cols: int = 4):
    """A figure with one panel per item, at most ``max_cols`` a row; unused panels hidden.
    Returns the figure and the flat list of axes."""
    n = max(n_items, 1)
    ncol = min(n, max_cols)
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(size[0] * ncol, size[1] * nrow),
                             squeeze=False)
    for ax in axes.ravel()[n_items:]:
        ax.axis("off")
    return fig, list(axes.ravel())


def plot_confusion(predictions_df, *, threshold=0.5) -> str:
    """Pooled confusion matrices per (input set, model): each fold's own predicted labels
    (``predicted_label``, from its in-fold threshold) where given, else ``threshold``."""
    from sklearn.metrics import confusion_matrix

    df = predictions_df.copy()
    _check_pred(df)
    df["_leaky"] = is_leaky(df)
    groups = list(df.groupby(["input_set", "model"], sort=False))
    fig, axes = _panels(len(groups), (2.6, 2.6))
    for ax, ((s, m), g) in zip(axes, groups):
        y = g["true_label"].to_numpy(dtype=int)
        yhat = (g["predicted_label"].to_numpy(dtype=int) if "predicted_label" in g
                else (g["probability"].to_numpy(dtype=float) >= threshold).astype(int))
        cm = confusion_matrix(y, yhat, labels=[0, 1])
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center")
        ax.set_xticks([0, 1], ["NR", "R"])
        ax.set_yticks([0, 1], ["NR", "R"])
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        leaky = bool(g["_leaky"].any())
        ax.set_title(f"{_label_of(s, leaky)}\n{m}", fontsize=8,
                     color="crimson" if leaky else "black")
    fig.tight_layout()
    return fig_to_data_uri(fig)


def plot_learning_curves(histories: dict) -> str:
    """Training and validation loss per epoch: one small panel per fold, a row per input set.

    ``histories`` maps ``(input_set, repeat, fold[, member])`` to ``{"loss": [...],
    "val_loss": [...]}``; a fold flagged by :func:`fold_training_flags` has a red title.
    """
    by_set: dict = {}
    for key, h in histories.items():
        key = key if isinstance(key, tuple) else (key,)
        by_set.setdefault(str(key[0]), []).append(("/".join(map(str, key[1:])), h))
    rows = max(len(by_set), 1)
    cols = max([len(v) for v in by_set.values()] + [1])
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols + 0.6, 1.5 * rows + 0.4),
                             squeeze=False, sharey="row")
    for ax in axes.ravel():
        ax.set_visible(False)
    for r, (s, hs) in enumerate(by_set.items()):
        for c, (label, h) in enumerate(hs):
            ax = axes[r, c]
            ax.set_visible(True)
            if h.get("loss") is not None:
                ax.plot(h["loss"], color="tab:blue", lw=0.9)
            if h.get("val_loss") is not None:
                ax.plot(h["val_loss"], color="tab:orange", lw=0.9)
            flagged = bool(fold_training_flags(h))
            ax.set_title(f"{s} {label}", fontsize=7,
                         color="crimson" if flagged or "leaky" in s.lower() else "black")
            ax.tick_params(labelsize=6)
    axes[0, 0].plot([], [], color="tab:blue", label="train")
    axes[0, 0].plot([], [], color="tab:orange", label="validation")
    axes[0, 0].legend(fontsize=6)
    fig.supxlabel("epoch", fontsize=8)
    fig.supylabel("loss", fontsize=8)
    return fig_to_data_uri(fig)


def fold_training_flags(history: dict, tol: float = 1e-3) -> list[str]:
    """What is wrong with one fold's training, in words (empty when nothing is): a
    validation loss that never moved, restarts of the training guard and its flags."""
    flags = []
    val = np.asarray(history.get("val_loss") or [], dtype=float)
    if val.size >= 2 and np.all(np.isfinite(val)) and float(np.ptp(val)) < tol:
        flags.append(f"validation loss never moved ({val[0]:.3f})")
    elif val.size and not np.all(np.isfinite(val)):
        flags.append("validation loss is not finite")
    for r in history.get("restarts") or []:
        flags.append(f"restarted after attempt {r.get('attempt')}: {r.get('reason')}")
    flags.extend(str(f) for f in history.get("flags") or [])
    return flags


def _pooled_by_set(predictions_df):
    """{input set: [(model, pooled per-subject frame), ...]} of the non-leaky predictions."""
    from dpnbids.learn.metrics import pooled_predictions

    df = predictions_df.copy()
    _check_pred(df)
    if "participant_id" not in df and "participant" in df:
        df = df.rename(columns={"participant": "participant_id"})
    df = df[~is_leaky(df)]
    out: dict = {}
    for (s, m), g in df.groupby(["input_set", "model"], sort=False):
        out.setdefault(str(s), []).append((str(m), pooled_predictions(g)))
    return out


def plot_reliability(predictions_df, *, n_bins=5) -> str:
    """Reliability diagrams of the calibrated out-of-fold probabilities, one panel per
    input set: mean predicted probability against the observed responder rate in
    quantile bins (the diagonal is perfect calibration)."""
    from dpnbids.learn.calibration import reliability_curve

    sets = _pooled_by_set(predictions_df)
    n = max(len(sets), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.3), squeeze=False, sharey=True)
    axes[0, 0].set_ylabel("observed responder rate")
    for ax, (s, models) in zip(axes[0], sets.items()):
        for m, g in models:
            if g["probability"].nunique() < 2:
                continue
            rel = reliability_curve(g["true_label"], g["probability"], n_bins=n_bins)
            ax.plot(rel["mean_predicted"], rel["observed"], "o-", lw=1.2, ms=3, label=m)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("mean predicted probability")
        ax.legend(fontsize=7, loc="upper left")
    return fig_to_data_uri(fig)


def plot_decision_curve(predictions_df) -> str:
    """Decision curves (Vickers & Elkin 2006): net benefit of treating the subjects a model
    calls responders, against the threshold probability, with treat-all and treat-none."""
    from dpnbids.learn.calibration import net_benefit

    sets = _pooled_by_set(predictions_df)
    n = max(len(sets), 1)
    t = np.linspace(0.05, 0.95, 37)
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.3), squeeze=False, sharey=True)
    axes[0, 0].set_ylabel("net benefit")
    for ax, (s, models) in zip(axes[0], sets.items()):
        ref = None
        for m, g in models:
            nb = net_benefit(g["true_label"], g["probability"], t)
            ref = nb
            if m != "majority":
                ax.plot(t, nb["model"], lw=1.2, label=m)
        if ref is not None:
            ax.plot(t, ref["treat_all"], color="grey", lw=1.0, ls="--", label="treat all")
            ax.plot(t, ref["treat_none"], color="black", lw=0.8, label="treat none")
            prev = float(np.mean(models[0][1]["true_label"]))
            ax.set_ylim(-0.1, max(prev, 0.05) + 0.05)
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("threshold probability")
        ax.legend(fontsize=7, loc="upper right")
    return fig_to_data_uri(fig)


def plot_permutation_nulls(permutations: dict) -> str:
    """Histogram of each permutation null distribution with the observed statistic."""
    items = [(k, v) for k, v in permutations.items() if v.get("null_aucs")]
    fig, axes = _panels(len(items), (2.8, 2.4))
    for ax, (k, v) in zip(axes, items):
        null = np.asarray(v["null_aucs"], dtype=float)
        ax.hist(null[np.isfinite(null)], bins=30, color="tab:grey", alpha=0.8)
        ax.axvline(v["observed_auc"], color="crimson", lw=1.5)
        ax.axvline(0.5, color="black", lw=0.8, ls=":")
        ax.set_title(f"{k}: p = {v['p_value']:.3f}", fontsize=8)
        ax.set_xlabel("fold-mean AUC", fontsize=8)
    fig.tight_layout()
    return fig_to_data_uri(fig)
