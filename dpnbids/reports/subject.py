"""Per-subject HTML report (``sub-X.html``), fMRIPrep-like and self-contained.

Sections: Summary, Anatomical, Functional (one block per run), Errors and
warnings, About. Every optional input degrades to a note instead of failing;
every user-provided string is HTML-escaped.
"""

from __future__ import annotations

import datetime as _dt
import html
import logging
import sys
from pathlib import Path

import pandas as pd

import dpnbids

from dpnbids.derivatives import atomic_write_text
from dpnbids.messages import as_flags
from dpnbids.reports import figures

__all__ = ["render_subject_report", "esc", "page"]

LOGGER = logging.getLogger(__name__)

CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:0 2em 2em 2em;color:#222;max-width:1100px}
nav{position:sticky;top:0;background:#f4f4f4;padding:.4em;border-bottom:1px solid #ccc}
nav a{margin-right:1em}
h1{margin-top:.5em} h2{border-bottom:2px solid #3465a4;padding-top:.5em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #bbb;padding:.2em .5em;text-align:right}
th{background:#eee} td.l,th.l{text-align:left}
.note{color:#666;font-style:italic}
.warning{background:#fff0f0;border-left:6px solid #c00;padding:.5em;margin:.4em 0;color:#900;font-weight:bold}
.skipped{background:#fffbe6;border-left:6px solid #d9a400;padding:.4em;margin:.3em 0}
.leaky{background:#ffe0e0;color:#a00;font-weight:bold}
.badge{display:inline-block;padding:.1em .5em;border-radius:.6em;font-size:.8em;font-weight:bold}
.badge.sel{background:#2e7d32;color:#fff} .badge.leaky{background:#c00;color:#fff}
figure{margin:.5em 0} figure img{max-width:100%} figcaption{font-size:.85em;color:#444}
.gallery{display:flex;flex-wrap:wrap;gap:.5em} .gallery figure{border:1px solid #ddd;padding:.3em;width:48%}
.gallery figure.selected{border:3px solid #2e7d32}
pre{background:#f7f7f7;padding:.5em;white-space:pre-wrap}
"""


def esc(value) -> str:
    """HTML-escape any value (``str()`` first)."""
    return html.escape("" if value is None else str(value), quote=True)


def note(text) -> str:
    return f'<p class="note">{esc(text)}</p>'


def img(uri, caption="") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{esc(uri)}" alt="{esc(caption)}">{cap}</figure>'


def safe_figure(func, caption, *args, **kwargs) -> str:
    """Call a figure function; on any failure return a note naming the error."""
    try:
        return img(func(*args, **kwargs), caption)
    except Exception as exc:  # noqa: BLE001 - a report must never crash on a figure
        LOGGER.warning("report figure %r failed: %s", caption, exc)
        return note(f"{caption}: figure could not be drawn ({type(exc).__name__}: {exc}).")


def _flat_items(d: dict, prefix: str = ""):
    """``(key, value)`` rows with nested dicts flattened to ``parent / child`` keys."""
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            yield from _flat_items(v, prefix=f"{key} / ")
        else:
            yield key, v


def dict_table(d: dict, *, header=("item", "value")) -> str:
    """Two-column table; nested dicts become ``parent / child`` rows, never a dict dump."""
    rows = "".join(
        f'<tr><td class="l">{esc(k)}</td><td>{esc(_fmtv(v))}</td></tr>'
        for k, v in _flat_items(d)
    )
    return f'<table><tr><th class="l">{esc(header[0])}</th><th>{esc(header[1])}</th></tr>{rows}</table>'


def _fmtv(v):
    """A readable cell: floats to 4 significant digits, sequences and dicts spelled out."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_fmtv(x)}" for k, x in v.items()) or "none"
    if isinstance(v, (list, tuple)):
        items = [str(_fmtv(x)) for x in v[:8]]
        more = f", ... ({len(v)} in all)" if len(v) > 8 else ""
        return ", ".join(items) + more if items else "none"
    return v


def page(title: str, sections: list[tuple[str, str, str]]) -> str:
    """Assemble a full HTML page from ``(anchor, heading, body_html)`` sections.

    The reports are read by users of the command line: a parameter named in their text
    (```fd_thresh```, from warnings and notes) is shown as its flag (:mod:`dpnbids.messages`).
    """
    nav = "".join(f'<a href="#{esc(a)}">{esc(h)}</a>' for a, h, _ in sections)
    body = as_flags("".join(f'<section id="{esc(a)}"><h2>{esc(h)}</h2>{b}</section>'
                            for a, h, b in sections))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<nav>{nav}</nav><h1>{esc(title)}</h1>{body}</body></html>\n"
    )


def about_section(command_line=None) -> str:
    cmd = command_line if command_line is not None else " ".join(sys.argv)
    return dict_table(
        {
            "dpnbids version": dpnbids.__version__,
            "command line": cmd,
            "date (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        }
    )


def _run_name(run: dict, i: int) -> str:
    ents = run.get("entities") or {}
    if ents:
        return "_".join(f"{k}-{v}" for k, v in ents.items() if k not in ("subject", "suffix"))
    return f"run {i + 1}"


def _read_confounds(path):
    return pd.read_csv(path, sep="\t", na_values=["n/a"])


def _anat_block(run: dict) -> str:
    if run.get("t1w_std") and run.get("template"):
        return safe_figure(
            figures.plot_registration,
            "Spatial normalisation: template with the edges of the normalised T1w (red).",
            run["t1w_std"],
            run["template"],
            title="T1w -> template",
        )
    return note("T1w-to-template figure not available (normalised T1w or template not given).")


def _func_block(run: dict, i: int) -> str:
    parts = [f"<h3>{esc(_run_name(run, i))}</h3>"]
    for s in run.get("skipped_steps") or []:
        parts.append(f'<div class="skipped">Skipped: {esc(s)}</div>')
    for w in run.get("warnings") or []:
        parts.append(f'<div class="warning">WARNING: {esc(w)}</div>')
    if run.get("tr") is not None:
        parts.append(f"<p>Repetition time: {esc(run['tr'])} s</p>")
    if run.get("bold_ref") and run.get("t1w"):
        parts.append(
            safe_figure(
                figures.plot_registration,
                "Coregistration: T1w with the edges of the BOLD reference (red).",
                run["bold_ref"],
                run["t1w"],
                title="BOLD reference -> T1w",
            )
        )
    else:
        parts.append(note("BOLD-over-T1w figure not available (BOLD reference or T1w not given)."))
    if run.get("coreg_costs"):
        parts.append("<h4>Coregistration cost (mutual information, lower is better)</h4>")
        parts.append(dict_table(run["coreg_costs"], header=("transform", "cost")))
    if run.get("motion_summary"):
        parts.append("<h4>Motion summary</h4>")
        parts.append(dict_table(run["motion_summary"], header=("measure", "value")))
    else:
        parts.append(note("Motion summary not available."))
    conf = None
    if run.get("confounds_tsv"):
        try:
            conf = _read_confounds(run["confounds_tsv"])
        except Exception as exc:  # noqa: BLE001 - a report must never crash on one table
            parts.append(note(f"Confounds table could not be read: {exc}"))
    tr = run.get("tr") or 1.0
    if conf is not None:
        fd = run.get("fd_threshold")  # None or 0: censoring was off, no line to draw
        caption = "Framewise displacement (FD, Power) and DVARS" + (
            f"; dashed line: the `fd_thresh` censoring threshold, {fd:g} mm." if fd
            else "; no volume was censored (`fd_thresh` not given).")
        parts.append(safe_figure(figures.plot_confounds, caption, conf, tr=tr,
                                 fd_threshold=fd or None))
        parts.append(safe_figure(figures.plot_motion, "Estimated head motion.", conf))
    else:
        parts.append(note("Confound traces not available (no confounds TSV)."))
    if run.get("bold_std") and run.get("mask_std"):
        parts.append(
            safe_figure(figures.plot_carpet, "Carpet plot of the preprocessed BOLD in the brain mask.",
                        run["bold_std"], run["mask_std"], tr=tr)
        )
    else:
        parts.append(note("Carpet plot not available (preprocessed BOLD or mask not given)."))
    if run.get("prediction") and not run.get("prediction_in_summary"):
        parts.append("<h4>Predicted response to IV lidocaine</h4>")
        parts.append(dict_table(run["prediction"], header=("field", "value")))
    return "".join(parts)


def render_subject_report(
    *, subject, sessions_runs: list[dict] | None = None, out_file=None, command_line=None,
    boilerplate: str | None = None,
) -> str:
    """Render the per-subject HTML report.

    Parameters
    ----------
    subject : str
        Label with or without ``sub-``.
    sessions_runs : list of dict
        One dict per run; keys (all optional): ``entities``, ``t1w_std``,
        ``template``, ``bold_ref``, ``t1w``, ``bold_std``, ``mask_std``,
        ``confounds_tsv``, ``tr``, ``motion_summary``, ``skipped_steps``,
        ``warnings``, ``coreg_costs``, ``prediction``, ``boilerplate``.
    out_file : path, optional
        Written atomically when given.
    command_line : str, optional
        Shown in About; defaults to ``sys.argv``.
    boilerplate : str, optional
        Methods text; otherwise taken from the first run having one.

    Returns
    -------
    str
        The HTML document.
    """
    label = str(subject)
    label = label[4:] if label.startswith("sub-") else label
    runs = list(sessions_runs or [])
    all_warn = [w for r in runs for w in (r.get("warnings") or [])]
    all_skip = [s for r in runs for s in (r.get("skipped_steps") or [])]

    summary = dict_table(
        {
            "subject": label,
            "functional runs": len(runs),
            "warnings": len(all_warn),
            "skipped steps": len(all_skip),
        }
    )
    predicted = [r for r in runs if r.get("prediction")]
    if len(predicted) == 1:  # shown once, in the summary
        summary += "<h3>Prediction</h3>" + dict_table(predicted[0]["prediction"],
                                                      header=("field", "value"))
        runs = [{**r, "prediction_in_summary": True} for r in runs]
    elif predicted:
        summary += note(f"{len(predicted)} runs have a prediction: see each run under "
                        "Functional.")
    if all_warn:
        summary += f'<div class="warning">{len(all_warn)} warning(s): see "Errors and warnings".</div>'

    anat_run = next((r for r in runs if r.get("t1w_std") and r.get("template")), runs[0] if runs else {})
    anat = _anat_block(anat_run)
    func = "".join(_func_block(r, i) for i, r in enumerate(runs)) or note("No functional runs.")
    errs = "".join(f'<div class="warning">WARNING: {esc(w)}</div>' for w in all_warn)
    errs += "".join(f'<div class="skipped">Skipped: {esc(s)}</div>' for s in all_skip)
    errs = errs or note("No errors or warnings were recorded.")
    bp = boilerplate or next((r.get("boilerplate") for r in runs if r.get("boilerplate")), None)
    sections = [("summary", "Summary", summary), ("anatomical", "Anatomical", anat),
                ("functional", "Functional", func), ("errors", "Errors and warnings", errs)]
    if bp:  # no empty "Methods" section that reads as if something were missing
        sections.append(("methods", "Methods", f"<pre>{esc(bp)}</pre>"))
    text = page(f"dpnbids report: sub-{label}",
                sections + [("about", "About", about_section(command_line))])
    if out_file is not None:
        atomic_write_text(Path(out_file), text)
    return text
