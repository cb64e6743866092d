"""Self-contained HTML reports (figures embedded as base64 PNG; no network, no JS).

- :mod:`dpnbids.reports.figures`: pure plotting functions returning PNG data URIs.
- :func:`dpnbids.reports.subject.render_subject_report`: ``sub-X.html``.
- :func:`dpnbids.reports.group.render_group_report`: the group report.

Submodules are imported on demand so that ``import dpnbids.reports`` stays cheap.
"""
