"""Tests for the per-subject and group HTML reports and their figures."""

import base64
import html
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from dpnbids.reports import figures
from dpnbids.reports.group import LEAKY_LABEL, render_group_report
from dpnbids.reports.subject import render_subject_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png_uri(uri):
    assert uri.startswith("data:image/png;base64,")
    raw = base64.b64decode(uri.split(",", 1)[1])
    return raw[:8] == PNG_MAGIC and len(raw) > 500


@pytest.fixture
def rng():
    return np.random.default_rng(20)


@pytest.fixture
def anat(rng, affine):
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (7, 8, 9)), indexing="ij")
    data = np.exp(-(x**2 + y**2 + z**2) * 2) * 100 + rng.normal(0, 1, (7, 8, 9))
    return nib.Nifti1Image(data.astype("float32"), affine)


@pytest.fixture
def bold(rng, affine):
    return nib.Nifti1Image(rng.normal(100, 5, (7, 8, 9, 20)).astype("float32"), affine)


@pytest.fixture
def mask(affine):
    m = np.zeros((7, 8, 9), dtype="uint8")
    m[1:6, 1:7, 1:8] = 1
    return nib.Nifti1Image(m, affine)


@pytest.fixture
def confounds(rng):
    n = 20
    df = pd.DataFrame(rng.normal(0, 0.1, (n, 6)), columns=list(figures._MOTION_COLS))
    df["framewise_displacement"] = np.abs(rng.normal(0.2, 0.2, n))
    df["dvars"] = np.abs(rng.normal(1, 0.2, n))
    df.loc[0, ["framewise_displacement", "dvars"]] = np.nan
    return df


@pytest.fixture
def components_df():
    return pd.DataFrame(
        {
            "index": [0, 1, 2],
            "network_label": ["DefaultMode", "Visual", "no_match"],
            "spatial_r": [0.6, 0.5, 0.1],
            "dice": [0.4, 0.3, 0.0],
            "stability": [0.95, 0.9, 0.6],
            "t": [2.1, -0.3, 1.0],
            "p": [0.04, 0.77, 0.32],
            "r": [0.31, -0.05, 0.15],
            "selected": [True, False, False],
        }
    )


@pytest.fixture
def predictions(rng):
    rows = []
    y = np.array([0, 1] * 6)
    for s in ("ASC", "SSC", "SSC-leaky"):
        for m in ("cnn", "svm"):
            p = np.clip(y * 0.4 + rng.uniform(0, 0.6, y.size), 0, 1)
            for i, (yy, pp) in enumerate(zip(y, p)):
                rows.append(dict(participant=f"sub-{i:02d}", repeat=0, fold=i % 3,
                                 input_set=s, model=m, true_label=int(yy), probability=pp))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- figures

def test_registration_and_carpet_figures(anat, bold, mask):
    assert _is_png_uri(figures.plot_registration(anat, anat, title="t"))
    assert _is_png_uri(figures.plot_registration(bold, anat, title="4D moving is averaged"))
    assert _is_png_uri(figures.plot_carpet(bold, mask, tr=2.0))


def test_carpet_rejects_3d(anat, mask):
    from dpnbids.exceptions import InputError

    with pytest.raises(InputError, match="4D"):
        figures.plot_carpet(anat, mask, tr=2.0)


def test_confound_and_motion_figures(confounds):
    assert _is_png_uri(figures.plot_confounds(confounds, tr=2.0))
    assert _is_png_uri(figures.plot_motion(confounds))
    # missing columns degrade to an annotated empty panel
    assert _is_png_uri(figures.plot_confounds(pd.DataFrame({"a": [1, 2]}), tr=2.0))


def test_component_gallery_one_figure_per_component(components, components_df, anat):
    # glass-brain path (bg_img=None) is exercised by test_group_report_full
    uris = figures.plot_component_gallery(components, None, bg_img=anat)
    assert len(uris) == 3 and all(_is_png_uri(u) for u in uris)
    assert len(figures.plot_component_gallery(components.slicer[..., 0], None, bg_img=anat)) == 1
    assert "DefaultMode" in figures.component_title(components_df.iloc[0].to_dict())


def test_prediction_figures(predictions):
    assert _is_png_uri(figures.plot_roc(predictions))
    assert _is_png_uri(figures.plot_confusion(predictions))
    hist = {("ASC", 0, f): {"loss": [1.0, 0.8, 0.7], "val_loss": [1.1, 0.9]} for f in range(3)}
    assert _is_png_uri(figures.plot_learning_curves(hist))


def test_is_leaky_supports_column_and_name(predictions):
    flag = figures.is_leaky(predictions)
    assert flag.sum() == (predictions["input_set"] == "SSC-leaky").sum()
    df = predictions.assign(input_set="SSC", leaky=predictions["input_set"].str.contains("leaky"))
    assert figures.is_leaky(df).sum() == flag.sum()


def test_prediction_figures_need_columns():
    from dpnbids.exceptions import InputError

    with pytest.raises(InputError, match="probability"):
        figures.plot_roc(pd.DataFrame({"input_set": ["A"], "model": ["cnn"], "true_label": [1]}))


# ---------------------------------------------------------------- subject report

def test_subject_report_full(tmp_path, anat, bold, mask, confounds):
    paths = {}
    for name, img in dict(anat=anat, bold=bold, mask=mask).items():
        paths[name] = tmp_path / f"{name}.nii.gz"
        img.to_filename(paths[name])
    conf_tsv = tmp_path / "conf.tsv"
    confounds.to_csv(conf_tsv, sep="\t", index=False, na_rep="n/a")
    warn = "BOLD-to-T1w cost barely improved: <b>different subjects</b> & check"
    run = dict(
        entities={"task": "rest", "run": 1}, t1w_std=paths["anat"], template=paths["anat"],
        bold_ref=paths["anat"], t1w=paths["anat"], bold_std=paths["bold"], mask_std=paths["mask"],
        confounds_tsv=conf_tsv, tr=2.0,
        motion_summary={"mean FD (mm)": 0.21, "n FD>0.5": 2},
        skipped_steps=["slice-timing correction: no SliceTiming in sidecar"],
        warnings=[warn], coreg_costs={"identity": -0.2, "final": -0.21},
        prediction={"probability": 0.73, "model_version": "0.1.0", "cv_auc": 0.8},
    )
    out = tmp_path / "out" / "sub-01.html"
    text = render_subject_report(subject="sub-01", sessions_runs=[run], out_file=out)
    assert out.read_text(encoding="utf-8") == text
    assert [p.name for p in out.parent.iterdir()] == ["sub-01.html"]  # no temp file left
    for heading in ("Summary", "Anatomical", "Functional", "Errors and warnings", "About"):
        assert f"<h2>{heading}</h2>" in text
    assert html.escape(warn) in text and warn not in text
    assert "slice-timing correction: no SliceTiming in sidecar" in text
    assert "task-rest_run-1" in text
    assert "0.73" in text
    assert "not available" not in text  # every figure was drawn
    assert "could not be drawn" not in text
    n_img = len(re.findall(r'<img src="data:image/png;base64,', text))
    assert n_img == 5  # T1w->template, BOLD->T1w, confounds, motion, carpet


def test_subject_report_degrades_without_inputs(tmp_path):
    text = render_subject_report(subject="02", sessions_runs=[{}])
    assert "sub-02" in text and "<h2>Functional</h2>" in text
    assert "not available" in text
    text = render_subject_report(subject="03", sessions_runs=[])
    assert "No functional runs" in text
    # an unreadable image becomes a note, not a crash
    text = render_subject_report(
        subject="04", sessions_runs=[{"t1w_std": tmp_path / "missing.nii.gz",
                                      "template": tmp_path / "missing.nii.gz"}])
    assert "could not be drawn" in text


# ---------------------------------------------------------------- group report

def test_group_report_full(tmp_path, components, components_df, predictions):
    table2 = pd.DataFrame(
        {"metric": ["AUC", "accuracy"], "ASC": ["0.81 [0.66, 0.93]", "0.74"],
         "SSC": ["0.70", "0.65"], "SSC-leaky": ["0.95", "0.90"], "RSP": ["0.55", "0.52"],
         "svm": ["0.60", "0.58"]}
    )
    hist = {("ASC", 0, 0): {"loss": [1.0, 0.5], "val_loss": [1.0, 0.7]}}
    note = "Fold 3: manifest <ok> & checked"
    out = tmp_path / "group.html"
    text = render_group_report(
        components_img=components, components_df=components_df, ica_info={"n_components": 3},
        predictions_df=predictions, table2_df=table2, histories=hist,
        permutation={"n_permutations": 100, "p_value": 0.02}, leakage_notes=[note],
        timings={"cv": 12.3}, out_file=out,
    )
    assert out.read_text(encoding="utf-8") == text
    assert [p.name for p in tmp_path.iterdir()] == ["group.html"]
    for heading in ("Summary", "Table 2: classification performance", "ROC curves",
                    "Confusion matrices", "Learning curves", "Component gallery", "About"):
        assert f"<h2>{html.escape(heading)}</h2>" in text
    for label in ("DefaultMode", "Visual", "no_match"):
        assert label in text
    assert "descriptive, all subjects" in text
    assert text.count('class="selected"') == 1
    gallery = text.split('<section id="components">')[1].split("</section>")[0]
    assert len(re.findall(r'<img src="data:image/png;base64,', gallery)) == 3
    assert html.escape(LEAKY_LABEL) in text
    assert "0.81 [0.66, 0.93]" in text and "0.020" in text
    assert html.escape(note) in text and note not in text
    assert "12 subjects" not in text and ">12<" in text  # 12 unique participants counted
    assert "could not be drawn" not in text


def test_group_report_leaky_boolean_column(predictions):
    df = predictions[predictions["input_set"] != "SSC-leaky"].copy()
    text = render_group_report(predictions_df=df)
    assert "LEAKY" not in text
    df["leaky"] = df["input_set"] == "SSC"
    text = render_group_report(predictions_df=df)
    assert html.escape(LEAKY_LABEL) in text


def test_group_report_all_missing():
    text = render_group_report()
    for heading in ("Summary", "ROC curves", "Component gallery", "Learning curves"):
        assert f"<h2>{heading}</h2>" in text
    assert "LEAKY" not in text
    assert text.count("not available") >= 5


def test_group_report_calibration_decisions_and_permutation_nulls(predictions, rng):
    df = predictions.copy()
    df["predicted_label"] = (df["probability"] >= 0.4).astype(int)
    perms = {"ASC": {"statistic": "fold-mean AUC", "observed_auc": 0.81,
                     "null_aucs": rng.normal(0.45, 0.1, 200).tolist(), "null_mean": 0.45,
                     "null_95th_percentile": 0.62, "p_value": 0.005, "n_permutations": 200},
             "ASC svm": {"statistic": "fold-mean AUC", "observed_auc": 0.7,
                         "null_aucs": rng.normal(0.44, 0.1, 200).tolist(), "null_mean": 0.44,
                         "null_95th_percentile": 0.61, "p_value": 0.02,
                         "n_permutations": 200}}
    text = render_group_report(predictions_df=df, permutation=perms)
    for heading in ("Calibration and decision curves", "Permutation tests"):
        assert f"<h2>{heading}</h2>" in text
    section = text.split("<h2>Calibration and decision curves</h2>")[1].split("<h2>")[0]
    assert section.count("data:image/png;base64,") == 2  # reliability + decision curve
    perm = text.split("<h2>Permutation tests</h2>")[1].split("<h2>")[0]
    assert "data:image/png;base64," in perm and "ASC svm" in perm and "0.005" in perm
    assert ">200<" in perm and "200.000" not in perm  # a count, not a float
    assert "below</em> 0.5" in perm  # the null bias is explained
    assert "0.44999" not in text and str(perms["ASC"]["null_aucs"][0])[:8] not in text


def test_roc_legend_gives_the_prior_only_model_auc_0_5_as_table_2_does(monkeypatch):
    """Pooled fold priors of the majority baseline draw an 'AUC' from class balance alone
    (0.42 was shown); the legend must say 0.50, like Table 2."""
    import pandas as pd

    from dpnbids.reports import figures

    rows = []
    y = [1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0]
    for i, label in enumerate(y):
        fold = i % 3
        rows.append({"participant_id": f"{i:02d}", "repeat": 0, "fold": fold,
                     "input_set": "ASC", "model": "majority", "true_label": label,
                     "probability": [0.3, 0.6, 0.45][fold]})
        rows.append({"participant_id": f"{i:02d}", "repeat": 0, "fold": fold,
                     "input_set": "ASC", "model": "cnn", "true_label": label,
                     "probability": 0.2 + 0.6 * label + 0.01 * i})
    legends = []
    monkeypatch.setattr(figures, "fig_to_data_uri", lambda fig: legends.extend(
        t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()))
    figures.plot_roc(pd.DataFrame(rows))
    assert "majority AUC=0.50 (prior only)" in legends
    assert "cnn AUC=1.00" in legends


def test_subject_report_prediction_once_no_empty_methods_and_fd_line_only_when_censoring(
        tmp_path, confounds, monkeypatch):
    from dpnbids.reports import figures

    conf_tsv = tmp_path / "conf.tsv"
    confounds.to_csv(conf_tsv, sep="\t", index=False, na_rep="n/a")
    drawn = []
    real = figures.plot_confounds
    monkeypatch.setattr(figures, "plot_confounds",
                        lambda *a, **k: drawn.append(k.get("fd_threshold")) or real(*a, **k))
    run = dict(confounds_tsv=conf_tsv, tr=2.0,
               prediction={"probability_response": 0.61, "responder": True})
    text = render_subject_report(subject="01", sessions_runs=[run])
    assert text.count("probability_response") == 1  # the summary only
    assert "<h2>Methods</h2>" not in text and "No methods text" not in text
    assert drawn == [None] and "FD threshold 0.5" not in text
    assert "no volume was censored" in text
    text = render_subject_report(subject="01", sessions_runs=[{**run, "fd_threshold": 0.3}])
    assert drawn[-1] == 0.3 and "threshold, 0.3 mm" in text


def test_group_report_audit_and_permutation_text_fit_the_run(predictions, rng):
    perms = {"ASC": {"statistic": "fold-mean AUC", "observed_auc": 0.8,
                     "null_aucs": rng.normal(0.45, 0.1, 50).tolist(), "null_mean": 0.45,
                     "null_95th_percentile": 0.6, "p_value": 0.02, "n_permutations": 50}}
    text = render_group_report(predictions_df=predictions, permutation=perms)
    n = predictions["participant"].nunique()
    assert f"with {n} subjects" in text and "about 40" not in text
    audit = text.split("<h2>Leakage audit</h2>")[1].split("<h2>")[0]
    assert "The leakage audit ran on every outer fold" in audit
    assert "No leakage-audit notes" not in text


def test_confusion_counts_contrast_with_their_cell(predictions, monkeypatch):
    from matplotlib.colors import to_rgb

    from dpnbids.reports import figures

    seen = []
    monkeypatch.setattr(figures, "fig_to_data_uri", lambda fig: seen.append(fig) or "")
    figures.plot_confusion(predictions)
    for ax in seen[0].axes:
        if not ax.get_visible() or not ax.images:
            continue
        image = ax.images[0]
        for label in ax.texts:
            x, y = (int(round(v)) for v in label.get_position())
            cell = image.cmap(image.norm(image.get_array()[y, x]))[:3]
            luminance = 0.2126 * cell[0] + 0.7152 * cell[1] + 0.0722 * cell[2]
            text_lum = sum(to_rgb(label.get_color())) / 3
            assert abs(luminance - text_lum) > 0.4, (label.get_text(), cell)


def test_attribution_share_error_bars_stay_within_0_and_1(monkeypatch):
    import pandas as pd

    from dpnbids.reports import figures, saliency

    table = pd.DataFrame({"model": ["cnn"] * 3, "component": [0, 1, 2], "rank": [1, 2, 3],
                          "network": ["a", "b", "c"], "share_mean": [0.6, 0.3, 0.1],
                          "share_sd": [0.5, 0.4, 0.3]})
    seen = []
    monkeypatch.setattr(figures, "fig_to_data_uri", lambda fig: seen.append(fig) or "")
    saliency.plot_network_ranking(table)
    ax = seen[0].axes[0]
    lows = [seg[0][0] for coll in ax.collections for seg in coll.get_segments()]
    highs = [seg[1][0] for coll in ax.collections for seg in coll.get_segments()]
    assert lows and min(lows) >= 0.0 and max(highs) <= 1.0
