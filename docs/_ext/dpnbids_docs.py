"""Sphinx extension: pages of the manual generated from the code at build time.

* ``_generated/options.md``: every option of ``dpnbids``, from ``build_parser()``
  (``tools/options_table.py`` renders the same tables on the command line);
* ``_generated/workflows.md``: the nodes and edges of the ``init_*_wf`` factories,
  built (not run) on a throw-away four-volume dataset;
* ``_generated/modules.md``: every module of the package with its docstring's first line;
* ``_generated/results.md``: the index of the dated measurements in
  ``benchmarks/results/``, each linked to its page under ``results/``.

The pages include these files (``{include}``), so nothing in them is pasted by hand.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

DOCS = Path(__file__).resolve().parents[1]
REPO = DOCS.parent
GENERATED = DOCS / "_generated"
RESULTS = REPO / "benchmarks" / "results"


def _write(path: Path, text: str) -> None:
    """Write only when the text changed, so Sphinx's incremental builds stay incremental."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _options_page() -> str:
    sys.path.insert(0, str(REPO / "tools"))
    from options_table import render  # tools/ is a folder of scripts, not a package

    return render()


def _tiny_bids(root: Path) -> Path:
    """The smallest dataset ``collect_inputs`` accepts: two subjects, one 4-volume run each."""
    import nibabel as nib
    import numpy as np

    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "docs", "BIDSVersion": "1.9.0", "DatasetType": "raw"}))
    (root / "task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0,
                                                          "TaskName": "rest"}))
    (root / "participants.tsv").write_text("participant_id\tresponder\nsub-01\t1\nsub-02\t0\n")
    for sub in ("01", "02"):
        for kind, shape, name in (("anat", (4, 4, 4), "T1w"), ("func", (4, 4, 4, 4),
                                                               "task-rest_bold")):
            folder = root / f"sub-{sub}" / kind
            folder.mkdir(parents=True, exist_ok=True)
            image = nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4))
            nib.save(image, str(folder / f"sub-{sub}_{name}.nii.gz"))
    return root


def _describe(workflow, title: str, factory: str) -> list[str]:
    """A section per workflow: its nodes (with their interface) and its edges."""
    lines = [f"### `{workflow.name}`", "", f"Built by `{factory}`. {title}", "",
             "| Node | Interface |", "|---|---|"]
    graph = workflow._graph  # nipype exposes the node graph only here
    for node in sorted(graph.nodes, key=lambda n: n.name):
        kind = type(node.interface).__name__ if hasattr(node, "interface") else "workflow"
        lines.append(f"| `{node.name}` | `{kind}` |")
    lines += ["", "Edges (source node: outputs -> target node: inputs):", ""]
    for src, dst, data in sorted(graph.edges(data=True), key=lambda e: (e[0].name, e[1].name)):
        fields = ", ".join(f"`{a}` -> `{b}`" for a, b in data.get("connect", []))
        lines.append(f"- `{src.name}` -> `{dst.name}`: {fields}")
    return lines + [""]


def _workflows_page() -> str:
    from dpnbids.bids import collect_inputs
    from dpnbids.cli.parser import parse_args
    from dpnbids.config import config_from_args
    from dpnbids.workflows.base import init_anat_wf, init_single_subject_wf
    from dpnbids.workflows.bold import init_bold_wf
    from dpnbids.workflows.group import init_dualreg_wf

    with tempfile.TemporaryDirectory() as tmp:
        bids = _tiny_bids(Path(tmp) / "bids")
        _, args = parse_args([str(bids), str(Path(tmp) / "out"), "participant",
                              "--skip-bids-validation", "--participant-label", "01"])
        config = config_from_args(args)
        sub = collect_inputs(bids, participant_label=["01"])["01"]
        meta = {"RepetitionTime": 2.0}
        run = SimpleNamespace(source=str(sub.bold[0]), denoised=str(sub.bold[0]),
                              mask=str(sub.t1w))
        lines = ["## Participant level (built-in preprocessing)", ""]
        lines += _describe(init_single_subject_wf(config, sub), "One per subject: the "
                           "anatomical workflow, one BOLD workflow per run, the report.",
                           "dpnbids.workflows.base.init_single_subject_wf")
        lines += _describe(init_anat_wf(config, sub.t1w), "N4, brain extraction, "
                           "normalisation, tissue maps.", "dpnbids.workflows.base.init_anat_wf")
        lines += _describe(init_bold_wf(config, sub.bold[0], meta), "One per BOLD run.",
                           "dpnbids.workflows.bold.init_bold_wf")
        lines += ["## Group level: dual regression", ""]
        lines += _describe(init_dualreg_wf(config, [run], str(sub.bold[0]),
                                           {"space": config.preproc.output_space}),
                           "One dual-regression node and three sinks per run.",
                           "dpnbids.workflows.group.init_dualreg_wf")
    return "\n".join(lines)


def _modules_page() -> str:
    """Every module of the package with the first line of its docstring, by sub-package."""
    import ast

    package = REPO / "dpnbids"
    lines = ["| Module | What it holds |", "|---|---|"]
    for path in sorted(package.rglob("*.py")):
        if path.name == "__init__.py" and path.parent != package:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        summary = doc.strip().split("\n\n")[0].replace("\n", " ").replace("|", "\\|")
        lines.append(f"| `{name}` | {summary} |")
    return "\n".join(lines) + "\n"


def _results_pages() -> str:
    """One page per file of benchmarks/results/ (an include), and their index."""
    lines = ["| Measurement | File |", "|---|---|"]
    for path in sorted(RESULTS.glob("*.md")):
        title = next((line.lstrip("# ").strip() for line in path.read_text().splitlines()
                      if line.startswith("# ")), path.stem)
        _write(DOCS / "results" / path.name,
               f"```{{include}} ../../benchmarks/results/{path.name}\n```\n")
        lines.append(f"| [{title}](results/{path.stem}.md) | `benchmarks/results/{path.name}` |")
    return "\n".join(lines) + "\n"


def _generate(app) -> None:
    _write(GENERATED / "options.md", _options_page())
    _write(GENERATED / "workflows.md", _workflows_page())
    _write(GENERATED / "modules.md", _modules_page())
    _write(GENERATED / "results.md", _results_pages())


def setup(app):
    app.connect("builder-inited", _generate)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
