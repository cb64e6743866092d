"""Group-level HTML report: summary, Table 2, ROC, confusion, learning curves, gallery.

Results from ``--paper-faithful`` mode (rows whose ``input_set`` contains
"leaky", or whose boolean ``leaky`` column is true; Table 2 columns whose name
contains "leaky") are labelled "LEAKY (paper-faithful): optimistic" wherever
they appear.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dpnbids.derivatives import atomic_write_text
from dpnbids.reports import figures
from dpnbids.reports.subject import about_section, dict_table, esc, note, page, safe_figure

__all__ = ["render_group_report", "timings_table", "LEAKY_LABEL"]

LEAKY_LABEL = "LEAKY (paper-faithful): optimistic"
_LEAKY_BADGE = f'<span class="badge leaky">{esc(LEAKY_LABEL)}</span>'


def _is_leaky_name(name) -> bool:
    return "leaky" in str(name).lower()


def _df_table(df: pd.DataFrame, *, index=True) -> str:
    """Escaped HTML table; columns/rows with 'leaky' in their name get the leaky style."""
    cols = list(df.columns)
    head = ('<th class="l"></th>' if index else "") + "".join(
        f'<th class="{"leaky" if _is_leaky_name(c) else ""}">{esc(c)}'
        f'{"<br>" + esc(LEAKY_LABEL) if _is_leaky_name(c) else ""}</th>'
        for c in cols
    )
    rows = []
    for idx, r in df.iterrows():
        flag = r.get("leaky", False)
        leaky_row = _is_leaky_name(idx) or (isinstance(flag, (bool, np.bool_)) and bool(flag))
        cells = (f'<td class="l">{esc(idx)}</td>' if index else "") + "".join(
            f'<td class="{"leaky" if (_is_leaky_name(c) or leaky_row) else ""}">{esc(_cell(v))}</td>'
            for c, v in r.items()
        )
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _cell(v):
    if isinstance(v, (float, np.floating)):
        return "n/a" if np.isnan(v) else f"{v:.3f}"
    return v


def _summary(predictions_df, ica_info, timings, permutation) -> str:
    parts = []
    if predictions_df is not None and len(predictions_df):
        df = predictions_df
        if "participant" in df.columns and "true_label" in df.columns:
            subj = df.drop_duplicates("participant")
            counts = subj["true_label"].value_counts().to_dict()
            parts.append(
                dict_table(
                    {
                        "subjects": len(subj),
                        "responders (label 1)": counts.get(1, 0),
                        "non-responders (label 0)": counts.get(0, 0),
                    },
                    header=("cohort", "n"),
                )
            )
        sets = list(dict.fromkeys(df["input_set"].astype(str))) if "input_set" in df else []
        if sets:
            parts.append(
                "<p>Input sets: "
                + ", ".join(
                    esc(s) + (" " + _LEAKY_BADGE if _is_leaky_name(s) else "") for s in sets
                )
                + "</p>"
            )
        if "leaky" in df.columns and df["leaky"].fillna(False).astype(bool).any():
            parts.append(f"<p>Some predictions are {_LEAKY_BADGE}.</p>")
    else:
        parts.append(note("No predictions were given: cohort counts unavailable."))
    if ica_info:
        parts.append("<h3>Settings</h3>" + dict_table(ica_info, header=("setting", "value")))
    if permutation:
        parts.append("<h3>Permutation test</h3>" + dict_table(permutation, header=("item", "value")))
    if timings:
        parts.append("<h3>Timings</h3>" + timings_table(timings))
    return "".join(parts)


_TIMING_NAMES = {"total_s": "total (s)", "seconds_per_fold_mean": "per fold, mean (s)",
                 "seconds_per_epoch_mean": "per epoch, mean (s)",
                 "seconds_per_fold": "per fold (s)"}


def _timing_cell(value) -> str:
    if isinstance(value, (list, tuple)):
        values = [float(v) for v in value if isinstance(v, (int, float, np.number))]
        if not values:
            return "n/a"
        if len(values) == 1:
            return f"{values[0]:.1f}"
        return f"{len(values)} folds, {min(values):.1f}-{max(values):.1f}"
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return f"{float(value):.1f}"
    return str(value)


def timings_table(timings: dict) -> str:
    """One row per step, one column per measure (seconds), e.g. the CV of each input set.

    ``timings`` maps a step to seconds, or to a dict of measures such as
    ``total_s``, ``seconds_per_fold_mean`` and ``seconds_per_fold`` (a list).
    """
    nested = {k: v for k, v in timings.items() if isinstance(v, dict)}
    flat = {k: v for k, v in timings.items() if not isinstance(v, dict)}
    measures = list(dict.fromkeys(m for v in nested.values() for m in v))
    if flat and "total_s" not in measures:
        measures.insert(0, "total_s")
    head = '<th class="l">step</th>' + "".join(
        f"<th>{esc(_TIMING_NAMES.get(m, m.replace('_', ' ')))}</th>" for m in measures)
    rows = []
    for step, value in {**nested, **flat}.items():
        values = value if isinstance(value, dict) else {"total_s": value}
        cells = "".join(f"<td>{esc(_timing_cell(values[m]) if m in values else '')}</td>"
                        for m in measures)
        rows.append(f'<tr><td class="l">{esc(step)}</td>{cells}</tr>')
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _training_flags(histories: dict) -> str:
    """A warning listing every fold whose training was flagged, or a note that none was."""
    rows = []
    for key, h in histories.items():
        for flag in figures.fold_training_flags(h):
            name = " ".join(map(str, key if isinstance(key, tuple) else (key,)))
            rows.append(f"<li>{esc(name)}: {esc(flag)}</li>")
    if not rows:
        return note(f"Every one of the {len(histories)} trained networks moved its validation "
                    "loss; none was restarted by the training guard.")
    return ('<div class="warning">Training needs a look in these folds (input set, repeat, '
            f"fold):<ul>{''.join(rows)}</ul></div>")


def _table2(table2_df, metrics_df, permutation) -> str:
    parts = []
    if table2_df is not None and len(table2_df):
        t2 = table2_df
        parts.append(_df_table(t2.set_index("metric") if "metric" in t2.columns else t2))
        parts.append(
            "<p class=\"note\">Rows: metrics (pooled out-of-fold with bootstrap 95% CI, "
            "and mean ± SD over folds where given). Columns: input sets and baselines on "
            "identical folds.</p>"
        )
    else:
        parts.append(note("Table 2 not available."))
    if permutation and "p_value" in permutation:
        parts.append(f"<p>Label-permutation p-value for AUC: {esc(_cell(permutation['p_value']))}</p>")
    parts.append(
        "<p class=\"note\">Probabilities are Platt-calibrated and labels come from an "
        "operating threshold, both fitted inside each outer training fold (never on its "
        "test subjects): sensitivity, specificity, PPV, NPV and balanced accuracy are at "
        "those thresholds. A prior-only model (majority) ranks nobody: its AUC is 0.5 by "
        "definition.</p>")
    if metrics_df is not None and len(metrics_df):
        parts.append("<h3>All metrics</h3>" + _df_table(metrics_df, index=False))
    return "".join(parts)


def _nested_permutations(permutation) -> dict:
    """The group level's {name: record} permutation results (not the flat legacy form)."""
    if not permutation or "p_value" in permutation:
        return {}
    return {k: v for k, v in permutation.items() if isinstance(v, dict) and "p_value" in v}


def _permutations(permutation, n_subjects: int | None = None) -> str:
    records = _nested_permutations(permutation)
    if not records:
        return note("No permutation test was run (`n_permutations_baselines` 0 and "
                    "`n_permutations` 0).")
    rows = pd.DataFrame([{"model": k, "observed fold-mean AUC": v["observed_auc"],
                          "null mean": v["null_mean"],
                          "null 95th percentile": v["null_95th_percentile"],
                          "p": v["p_value"], "permutations": str(int(v["n_permutations"]))}
                         for k, v in records.items()]).set_index("model")
    text = ("<p>Each permutation shuffles the responder labels and reruns the whole "
            "cross-validation: new stratified folds, the in-fold component selection, "
            "scaling and fitting. p = (1 + #null &ge; observed) / (1 + permutations).</p>"
            "<p class=\"note\">Read the p-value, not the distance from 0.5: "
            + (f"with {n_subjects} subjects" if n_subjects else "in small cohorts")
            + ", cross-validated AUCs under the null sit <em>below</em> 0.5 (each test "
            "fold's class balance is the mirror image of its training fold's, which pushes "
            "a model's predictions the wrong way), so a point AUC alone misleads in both "
            "directions. The null mean above measures that bias on these data.</p>")
    fig = safe_figure(figures.plot_permutation_nulls, "Null distributions (grey) and the "
                      "observed statistic (red); dotted: 0.5.", records)
    return text + _df_table(rows) + fig


def _n_subjects(predictions_df) -> int | None:
    """Number of subjects in the predictions (None when it cannot be told)."""
    columns = getattr(predictions_df, "columns", ())
    col = next((c for c in ("participant_id", "participant") if c in columns), None)
    return None if col is None else int(predictions_df[col].nunique())


def _decisions(predictions_df) -> str:
    if predictions_df is None or not len(predictions_df):
        return note("No predictions.")
    rel = safe_figure(figures.plot_reliability, "Reliability diagrams: pooled out-of-fold "
                      "calibrated probabilities in quantile bins against the observed "
                      "responder rate (dotted: perfect calibration).", predictions_df)
    dca = safe_figure(figures.plot_decision_curve, "Decision curves (Vickers & Elkin 2006): "
                      "net benefit = TP/n - FP/n x t/(1-t) of treating the subjects a model "
                      "calls responders at threshold probability t, against treating "
                      "everyone and no one.", predictions_df)
    return rel + dca


def _gallery(components_img, components_df) -> str:
    if components_img is None:
        if components_df is not None and len(components_df):
            return note("Component maps not given; table only.") + _df_table(
                components_df, index=False
            )
        return note("Component gallery not available (no components given).")
    try:
        uris = figures.plot_component_gallery(components_img, components_df)
    except Exception as exc:  # noqa: BLE001 - a report must never crash on a figure
        return note(f"Component gallery could not be drawn ({type(exc).__name__}: {exc}).")
    head = (
        "<p>Selected components (SSC, p &lt; threshold) are framed in green. "
        "The selection shown here uses all subjects: <b>descriptive, all subjects</b>; "
        "the cross-validated models select on training subjects only.</p>"
    )
    figs = []
    for k, uri in enumerate(uris):
        row = (
            components_df.iloc[k].to_dict()
            if components_df is not None and k < len(components_df)
            else {"index": k}
        )
        sel = figures.is_selected(row)
        badge = '<span class="badge sel">selected (descriptive, all subjects)</span> ' if sel else ""
        cap = figures.component_title(row)
        figs.append(
            f'<figure class="{"selected" if sel else ""}"><img src="{esc(uri)}" alt="{esc(cap)}">'
            f"<figcaption>{badge}{esc(cap)}</figcaption></figure>"
        )
    return head + f'<div class="gallery">{"".join(figs)}</div>'


def _model_order(record: dict | None) -> str:
    if not record:
        return note("Model-order record not available.")
    k = record.get("NumberOfComponents")
    rows = {"components": k, "requested": record.get("Requested"),
            "cap (shortest run's dof - 2)": record.get("Cap"),
            "PCA dimension": record.get("PCADimension")}
    text = ""
    if "Method" in record:
        rows.update({"estimator": record.get("MethodDescription", record["Method"]),
                     "estimate (before the cap)": record.get("Estimate"),
                     "capped": record.get("Capped")})
        text = safe_figure(figures.plot_scree, "Eigenvalue spectrum and model-order criterion; "
                           "red: the number of components used, grey: the cap.",
                           record.get("Spectrum", []), record.get("Criterion", []), k,
                           method=record.get("Method"), cap=record.get("Cap"))
    else:
        text = note("The number of components was fixed (`n_components`); no estimate was "
                    "made.")
    for warning in record.get("Warnings", []):
        text = note(f"Warning: {warning}") + text
    return dict_table(rows, header=("setting", "value")) + text


def _any_leaky(predictions_df, table2_df) -> bool:
    """Whether any prediction or Table 2 column comes from a leaky (paper-faithful) set."""
    leaky = False
    if predictions_df is not None and len(predictions_df):
        leaky = bool(figures.is_leaky(predictions_df).any())
    if table2_df is not None:
        leaky |= any(_is_leaky_name(c) for c in table2_df.columns)
    return leaky


def _performance_figures(predictions_df, any_leaky: bool) -> tuple[str, str]:
    """The pooled ROC curves and confusion matrices (badged when leaky results are in)."""
    if predictions_df is None or not len(predictions_df):
        return (note("ROC curves not available (no predictions)."),
                note("Confusion matrices not available (no predictions)."))
    roc = safe_figure(figures.plot_roc, "Pooled out-of-fold ROC curves per input set, "
                      "with the baselines on identical folds.", predictions_df)
    conf = safe_figure(figures.plot_confusion, "Pooled confusion matrices at each fold's "
                       "in-fold threshold.", predictions_df)
    if any_leaky:
        return _LEAKY_BADGE + roc, _LEAKY_BADGE + conf
    return roc, conf


def render_group_report(
    *, components_img=None, components_df=None, ica_info: dict | None = None,
    predictions_df=None, table2_df=None, metrics_df=None, histories=None,
    permutation: dict | None = None, leakage_notes: list[str] | None = None,
    timings: dict | None = None, out_file=None, command_line=None,
    model_order: dict | None = None, saliency_html: str | None = None,
    calibration_note: str | None = None,
    confounds_html: str | None = None, confound_warnings: list[str] | None = None,
) -> str:
    """Render the group HTML report.

    Parameters
    ----------
    components_img : path or 4D image, optional
    components_df : DataFrame, optional
        index, network_label, spatial_r, dice, stability, t, p, r, selected.
    ica_info : dict, optional
        Settings shown in the summary (n components, PCA dim, seeds, ...).
    predictions_df : DataFrame, optional
        participant, repeat, fold, input_set, model, true_label, probability
        (and optionally a boolean ``leaky``).
    table2_df : DataFrame, optional
        Metric rows (index or a ``metric`` column), one column per input
        set / baseline; cells may be preformatted strings such as
        ``"0.81 [0.66, 0.93]"``.
    metrics_df : DataFrame, optional
        Long-form metrics (per fold or summary); shown as a table.
    histories : dict, optional
        ``{(input_set, repeat, fold): {"loss": [...], "val_loss": [...]}}``.
    permutation : dict, optional
        E.g. ``{"n_permutations": 1000, "p_value": 0.01}``.
    leakage_notes : list of str, optional
        Audit notes (manifests, strict mode, paper-faithful caveats).
    timings : dict, optional
        Step -> seconds.
    model_order : dict, optional
        The ``ModelOrder`` record of the components JSON (chosen number, method,
        spectrum, criterion, cap); shown with a scree plot.
    saliency_html : str, optional
        The saliency section (:func:`dpnbids.reports.saliency.saliency_section`).
    calibration_note : str, optional
        A warning shown with Table 2 when a calibration rests on too few subjects
        (:func:`dpnbids.learn.calibration.calibration_note`).
    confounds_html : str, optional
        The confounds section (confound-only baselines, confounds per class).
    confound_warnings : list of str, optional
        Confounds that predict the label on their own; shown at the top of the summary.
    out_file : path, optional
        Written atomically when given.

    Returns
    -------
    str
        The HTML document.
    """
    any_leaky = _any_leaky(predictions_df, table2_df)
    nested = _nested_permutations(permutation)
    summary = _summary(predictions_df, ica_info, timings,
                       {k: {"p": v["p_value"], "permutations": v["n_permutations"]}
                        for k, v in nested.items()} if nested else permutation)
    if any_leaky:
        summary = (
            f'<div class="warning">This report contains results labelled {esc(LEAKY_LABEL)}: '
            "components were selected on all subjects, including each test fold, as in the "
            "original paper. Compare them with the leakage-free results.</div>" + summary
        )
    summary = "".join(f'<div class="warning">{esc(w)}</div>'
                      for w in confound_warnings or ()) + summary
    roc, conf = _performance_figures(predictions_df, any_leaky)
    if histories:
        lc = safe_figure(figures.plot_learning_curves,
                         "Training and inner-validation loss per epoch, one panel per fold "
                         "(red: a fold flagged below).", histories) + _training_flags(histories)
    else:
        lc = note("Learning curves not available.")
    leak = "".join(f"<li>{esc(n)}</li>" for n in (leakage_notes or []))
    audit = ("<p>The leakage audit ran on every outer fold: its training, validation and test "
             "subjects were checked to be disjoint, and the subjects that calibration and the "
             "operating threshold were fitted on were checked to include no test subject (the "
             "run stops with exit 3 otherwise). Component selection and scaling are fitted on "
             "each fold's training subjects only. Each fold's subjects are listed in "
             "group/cv/.</p>")
    leak = audit + (f"<p>Notes:</p><ul>{leak}</ul>" if leak else "")

    text = page(
        "dpnbids group report",
        [
            ("summary", "Summary", summary),
            ("table2", "Table 2: classification performance",
             (f'<div class="warning">{esc(calibration_note)}</div>' if calibration_note
              else "") + _table2(table2_df, metrics_df, permutation)),
            ("confounds", "Confounds: site, motion and covariates",
             confounds_html or note("No confound information was given.")),
            ("roc", "ROC curves", roc),
            ("confusion", "Confusion matrices", conf),
            ("decisions", "Calibration and decision curves", _decisions(predictions_df)),
            ("permutation", "Permutation tests",
             _permutations(permutation, _n_subjects(predictions_df))),
            ("learning", "Learning curves", lc),
            ("saliency", "Saliency", saliency_html or note("No saliency maps (`saliency` "
                                                           "none).")),
            ("order", "Model order", _model_order(model_order)),
            ("components", "Component gallery", _gallery(components_img, components_df)),
            ("audit", "Leakage audit", leak),
            ("about", "About", about_section(command_line)),
        ],
    )
    if out_file is not None:
        atomic_write_text(Path(out_file), text)
    return text
