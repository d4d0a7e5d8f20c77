"""A study's result as pictures and a page: read the study (`read`), draw its figures (`draw`), write the HTML
(`html`). `write_report(study, out_dir)` does all three."""

from autotune.report.html import write_report

__all__ = ["write_report"]
