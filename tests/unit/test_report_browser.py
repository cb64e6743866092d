"""group.html and sub-X.html as a reader sees them: rendered from small synthetic inputs and
opened in headless Chromium, whose visible text must hold the network labels and no raw
Python dicts, and whose every image must have loaded from a PNG data URI.

The browser tests skip when no Chromium is installed (``apt-get install chromium``, or
set ``DPNBIDS_CHROMIUM`` to a Chrome/Chromium binary); the title and table checks below
them always run."""
from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from dpnbids.reports import figures
from dpnbids.reports.group import render_group_report, timings_table
from dpnbids.reports.subject import render_subject_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NETWORKS = ["default_mode", "visual", "unmatched"]

# Appended to a copy of the page: after the load event, the page's visible text and
# the state of every image are written into the DOM, which --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const text = document.body.innerText;
  const imgs = Array.from(document.images).map(i => ({
    src: (i.getAttribute("src") || "").slice(0, 22), complete: i.complete,
    width: i.naturalWidth, height: i.naturalHeight}));
  const pre = document.createElement("pre");
  pre.id = "dpnbids-probe";
  pre.textContent = JSON.stringify({text: text, imgs: imgs});
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str | None:
    candidates = [os.environ.get("DPNBIDS_CHROMIUM"), "chromium", "chromium-browser",
                  "google-chrome", "google-chrome-stable", "chrome"]
    for name in filter(None, candidates):
        found = shutil.which(name)
        if found:
            return found
    return None


def _open_in_browser(page, tmp_path) -> dict:
    """Visible text and image states of ``page`` as headless Chromium renders it."""
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set DPNBIDS_CHROMIUM)")
    probed = tmp_path / f"probe-{page.name}"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                      encoding="utf-8")
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=20000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="dpnbids-probe">(.*?)</pre>', proc.stdout, re.S)
    assert proc.returncode == 0 and match, (
        f"Chromium ({exe}) did not render {page}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return json.loads(html.unescape(match.group(1)))


def _assert_png_data_uris(text: str, expected: int) -> None:
    srcs = re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', text)
    assert len(srcs) == expected, f"{len(srcs)} images, expected {expected}"
    for src in srcs:
        assert src.startswith("data:image/png;base64,"), src[:40]
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert raw[:8] == PNG_MAGIC and len(raw) > 500


def _assert_images_loaded(probe: dict, expected: int) -> None:
    imgs = probe["imgs"]
    assert len(imgs) == expected
    for image in imgs:
        assert image["src"].startswith("data:image/png"), image
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image


# ------------------------------------------------------------------ inputs

@pytest.fixture
def components_df():
    """The components table as the group level writes it (match_networks + stats)."""
    return pd.DataFrame({
        "component": [0, 1, 2], "network": NETWORKS, "spatial_r": [0.61, 0.48, 0.12],
        "dice": [0.4, 0.3, 0.0], "matched": [True, True, False],
        "stability": [0.93, 0.88, np.nan], "t": [2.1, -0.3, 1.0], "p": [0.04, 0.77, 0.32],
        "r": [0.31, -0.05, 0.15], "selected_descriptive_all_subjects": [True, False, False],
    })


@pytest.fixture
def timings():
    """As group/classify.py records them: one dict of measures per input set."""
    return {
        "ASC": {"total_s": 84.2, "seconds_per_fold_mean": 8.1, "seconds_per_epoch_mean": 0.4,
                "seconds_per_fold": [7.9, 8.0, 8.4]},
        "SSC": {"total_s": 61.0, "seconds_per_fold_mean": 6.0, "seconds_per_epoch_mean": 0.3,
                "seconds_per_fold": [5.8, 6.1, 6.1]},
        "ASC-icainfolds": {"total_s": 300.5},
    }


@pytest.fixture
def predictions(rng):
    y = np.array([0, 1] * 5)
    rows = []
    for input_set in ("ASC", "SSC"):
        p = np.clip(y * 0.4 + rng.uniform(0, 0.6, y.size), 0, 1)
        rows += [dict(participant=f"sub-{i:02d}", repeat=0, fold=i % 2, input_set=input_set,
                      model="cnn", true_label=int(t), probability=float(q))
                 for i, (t, q) in enumerate(zip(y, p))]
    return pd.DataFrame(rows)


@pytest.fixture
def group_html(tmp_path, components, components_df, timings, predictions):
    out = tmp_path / "group.html"
    render_group_report(components_img=components, components_df=components_df,
                        ica_info={"n_components": 3, "folds": 2,
                                  "analysis_grid": {"voxel_mm": 3.0, "shape": [7, 8, 9]}},
                        predictions_df=predictions, timings=timings,
                        permutation={"n_permutations": 10, "p_value": 0.09},
                        out_file=out, command_line="dpnbids bids out group")
    return out


@pytest.fixture
def subject_html(tmp_path, rng, affine):
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (7, 8, 9)), indexing="ij")
    anat = nib.Nifti1Image((np.exp(-(x**2 + y**2 + z**2) * 2) * 100).astype("float32"), affine)
    bold = nib.Nifti1Image(rng.normal(100, 5, (7, 8, 9, 20)).astype("float32"), affine)
    mask = np.zeros((7, 8, 9), "uint8")
    mask[1:6, 1:7, 1:8] = 1
    paths = {}
    for name, image in dict(anat=anat, bold=bold, mask=nib.Nifti1Image(mask, affine)).items():
        paths[name] = tmp_path / f"{name}.nii.gz"
        image.to_filename(paths[name])
    conf = pd.DataFrame(rng.normal(0, 0.1, (20, 6)), columns=list(figures._MOTION_COLS))
    conf["framewise_displacement"] = np.abs(rng.normal(0.2, 0.2, 20))
    conf["dvars"] = np.abs(rng.normal(1, 0.2, 20))
    conf_tsv = tmp_path / "conf.tsv"
    conf.to_csv(conf_tsv, sep="\t", index=False)
    run = dict(entities={"task": "rest"}, t1w_std=paths["anat"], template=paths["anat"],
               bold_ref=paths["anat"], t1w=paths["anat"], bold_std=paths["bold"],
               mask_std=paths["mask"], confounds_tsv=conf_tsv, tr=2.0,
               motion_summary={"mean FD (mm)": 0.21, "censoring": {"kept": 18, "dropped": 2}},
               prediction={"probability": 0.73, "cv_metrics": {"auc": 0.8, "ece": 0.1}})
    out = tmp_path / "sub-01.html"
    render_subject_report(subject="01", sessions_runs=[run], out_file=out)
    return out


# ------------------------------------------------------------------ without a browser

def test_component_title_reads_the_group_level_columns(components_df):
    titles = [figures.component_title(row) for row in components_df.to_dict("records")]
    assert titles[0] == "#0 default_mode | stab 0.93 | t 2.10 p 0.040 r 0.31"
    assert titles[1].startswith("#1 visual | stab 0.88")
    assert titles[2].startswith("#2 unmatched | stab n/a")  # one ICA run: no stability
    assert not any("unlabelled" in t or "#?" in t for t in titles)
    assert [figures.is_selected(r) for r in components_df.to_dict("records")] == [
        True, False, False]


def test_component_title_keeps_the_older_names():
    row = {"index": 4, "network_label": "Visual", "stability": 0.5, "selected": True}
    assert figures.component_title(row).startswith("#4 Visual | stab 0.50")
    assert figures.is_selected(row)
    assert figures.component_title({}).startswith("#? unlabelled")


def test_timings_table_has_one_row_per_step(timings):
    table = timings_table(timings)
    assert "{" not in table and "total_s" not in table
    for text in ("total (s)", "per fold, mean (s)", "84.2", "3 folds, 7.9-8.4", "300.5"):
        assert text in table, text
    assert table.count("<tr>") == 4  # header + ASC, SSC, ASC-icainfolds
    assert "12.3" in timings_table({"cv": 12.3})


def test_group_html_text(group_html):
    text = group_html.read_text(encoding="utf-8")
    assert "{&#x27;" not in text and "{'" not in text
    _assert_png_data_uris(text, expected=text.count("<img"))
    gallery = text.split('<section id="components">')[1].split("</section>")[0]
    assert text.count('class="selected"') == 1
    for k, network in enumerate(NETWORKS):
        assert f"#{k} {network}" in gallery


# ------------------------------------------------------------------ in Chromium

def test_group_report_in_chromium(group_html, tmp_path):
    n_img = group_html.read_text(encoding="utf-8").count("<img")
    assert n_img >= 3 + 2  # three components, ROC and confusion at least
    _assert_png_data_uris(group_html.read_text(encoding="utf-8"), expected=n_img)
    probe = _open_in_browser(group_html, tmp_path)
    visible = probe["text"]
    for k, network in enumerate(NETWORKS):
        assert f"#{k} {network}" in visible, network
    assert "unlabelled" not in visible and "#?" not in visible
    assert "{'" not in visible and "{\"" not in visible
    assert "Timings" in visible and "total (s)" in visible and "84.2" in visible
    assert "analysis_grid / voxel_mm" in visible
    _assert_images_loaded(probe, n_img)


def test_subject_report_in_chromium(subject_html, tmp_path):
    text = subject_html.read_text(encoding="utf-8")
    _assert_png_data_uris(text, expected=5)  # T1w->template, BOLD->T1w, FD/DVARS, motion, carpet
    probe = _open_in_browser(subject_html, tmp_path)
    visible = probe["text"]
    assert "sub-01" in visible and "task-rest" in visible
    assert "{'" not in visible and "{\"" not in visible
    assert "censoring / kept" in visible and "cv_metrics / auc" in visible
    _assert_images_loaded(probe, 5)
