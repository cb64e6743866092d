"""The group report's saliency section: per input set, a glass brain and slices of the
summed attribution map, and the components ranked by share of attribution (CNN and the
linear SVM's Haufe pattern)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dpnbids.reports import figures
from dpnbids.reports.subject import esc, note, safe_figure


def plot_saliency_map(map_img, *, title="") -> str:
    """Glass brain (left) and orthogonal slices through the peak (right) of a 3D map."""
    from nilearn import plotting

    img = figures._load(map_img)
    data = np.asarray(img.dataobj, dtype=float)
    vmax = float(np.nanmax(data)) or 1.0
    fig = plt.figure(figsize=(12, 2.8))
    left = fig.add_axes((0.0, 0.0, 0.5, 1.0))
    right = fig.add_axes((0.5, 0.0, 0.5, 1.0))
    glass = plotting.plot_glass_brain(img, axes=left, figure=fig, title=title, colorbar=False,
                                      vmax=vmax, threshold=0.2 * vmax, cmap="hot")
    peak = np.unravel_index(int(np.nanargmax(data)), data.shape)
    cut = img.affine[:3, :3] @ np.asarray(peak, float) + img.affine[:3, 3]
    slices = plotting.plot_stat_map(img, bg_img=None, axes=right, figure=fig,
                                    display_mode="ortho", cut_coords=tuple(cut),
                                    colorbar=True, vmax=vmax, threshold=0.2 * vmax,
                                    cmap="hot", draw_cross=False, annotate=True)
    uri = figures.fig_to_data_uri(fig)
    glass.close()
    slices.close()
    return uri


def plot_network_ranking(table: pd.DataFrame, *, title="") -> str:
    """Horizontal bars: share of attribution per component (network label), ranked, with
    the SD over folds as error bars; one panel per model."""
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models),
                                                      0.3 * table["component"].nunique() + 1.5),
                             squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = table[table["model"] == model].sort_values("rank", ascending=False)
        labels = [f"{int(c)}: {n}" for c, n in zip(rows["component"], rows["network"])]
        sd = pd.to_numeric(rows["share_sd"], errors="coerce").fillna(0.0).to_numpy()
        mean = pd.to_numeric(rows["share_mean"], errors="coerce").fillna(0.0).to_numpy()
        # a share lies in [0, 1]: the SD bar is cut there rather than drawn below 0
        err = np.vstack([np.minimum(sd, mean), np.minimum(sd, 1.0 - mean)])
        ax.barh(labels, mean, xerr=err, color="#c0392b" if model == "cnn"
                else "#2c3e50", alpha=0.85)
        ax.set_xlim(0, min(1.0, float(np.max(mean + err[1], initial=0.0)) * 1.1 or 1.0))
        ax.set_xlabel("share of |attribution| (mean ± SD over folds, cut at 0 and 1)")
        ax.set_title(f"{title} {model}".strip())
    fig.tight_layout()
    return figures.fig_to_data_uri(fig)


def saliency_section(saliency: dict | None) -> str | None:
    """HTML of the saliency section from :func:`dpnbids.workflows.saliency.
    write_group_saliency`'s result (None when there is nothing to show)."""
    if not saliency or not saliency.get("sets"):
        return None
    networks = saliency.get("networks")
    parts = ["<p>Mean |attribution| of the CNN over the outer folds' held-out subjects, "
             "each fold's model explaining its own test subjects (baseline: the fold's "
             "training mean map). The bars rank the components by their share of the "
             "attribution, for the CNN and for the linear SVM's Haufe pattern on the same "
             "folds. Attribution shows what the model used, not a cause.</p>"]
    for name, paths in saliency["sets"].items():
        parts.append(f"<h3>{esc(name)}</h3>")
        parts.append(safe_figure(plot_saliency_map, f"{name}: summed attribution map "
                                 f"({paths['map'].name}).", paths["map"], title=name))
        if networks is not None and len(networks):
            rows = networks[networks["input_set"] == name]
            if len(rows):
                parts.append(safe_figure(plot_network_ranking, f"{name}: components ranked "
                                         "by share of attribution.", rows, title=name))
            else:
                parts.append(note(f"{name}: no component ranking (its channels are not "
                                  "components)."))
    return "".join(parts)
