"""The one table every report writes (the experiment tables, the paper tables, the extras table), with what is
printed around it, rendered to Markdown, LaTeX (a booktabs float), CSV and HTML (for `snakemake --report`).

The cells are plain text and each renderer escapes them for its format; the CSV is not the rounded cells but the
numbers behind them (`Table.data`, a pandas DataFrame, written at full precision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape as html_escape
from pathlib import Path
from typing import TYPE_CHECKING

from dfcil_core.atomic import write_text_atomically

if TYPE_CHECKING:  # the frame is built by the caller: importing pandas here would slow the workflow's parse
    import pandas as pd

LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
                 "†": r"\dag{}", "×": r"$\times$", "Δ": r"$\Delta$", "σ": r"$\sigma$", "–": "--", "—": "---",
                 "−": "-", "≤": r"$\leq$", "≥": r"$\geq$", "·": r"$\cdot$", "§": r"\S{}", "→": r"$\to$"}

HTML_STYLE = ("body{font-family:sans-serif;font-size:14px} table{border-collapse:collapse} "
              "th,td{padding:2px 8px;border-bottom:1px solid #ccc;text-align:right} "
              "th:first-child,td:first-child{text-align:left}")


def latex_escape(text: str) -> str:
    # Character by character, so an inserted escape is never escaped again.
    return "".join(LATEX_ESCAPES.get(char, char) for char in str(text))


@dataclass
class Table:
    """A table and its surroundings. Markdown and HTML align the first column left and the others right;
    LaTeX follows `colspec`."""

    title: str  # the Markdown heading and the HTML title
    header: list[str]
    rows: list[list[str]]
    data: pd.DataFrame  # the CSV
    caption: str  # the LaTeX caption, plain text
    label: str  # the LaTeX label, after "tab:"
    colspec: str  # the LaTeX column alignment, e.g. "lrr"
    intro: str = ""  # a paragraph between the title and the table
    notes: list[str] = field(default_factory=list)  # paragraphs under the table (the LaTeX caption says them)
    card: list[str] = field(default_factory=list)  # the protocol card: items under the table, in every format
    latex_header: list[str] | None = None  # complete LaTeX lines, where one row of header cells is not enough
    latex_omits: str = ""  # characters the LaTeX body leaves out because its header names them (a unit)

    def to_markdown(self) -> str:
        def line(cells: list[str]) -> str:
            return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

        lines = [f"# {self.title}", ""] + ([self.intro, ""] if self.intro else [])
        lines += [line(self.header), "|---|" + "---:|" * (len(self.header) - 1), *map(line, self.rows)]
        for note in self.notes:
            lines += ["", note]
        if self.card:
            lines += ["", "**Protocol card**", "", *(f"- {item}" for item in self.card)]
        return "\n".join(lines + [""])

    def to_latex(self) -> str:
        def line(cells: list[str]) -> str:
            return " & ".join(cells) + r" \\"

        body = [[latex_escape("".join(c for c in cell if c not in self.latex_omits)) for cell in row]
                for row in self.rows]
        label = "".join(c if c.isalnum() else "-" for c in self.label)
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(self.caption)}}}",
                 rf"\label{{tab:{label}}}", rf"\begin{{tabular}}{{{self.colspec}}}", r"\toprule",
                 *(self.latex_header or [line([latex_escape(cell) for cell in self.header])]), r"\midrule",
                 *map(line, body), r"\bottomrule", r"\end{tabular}"]
        if self.card:
            lines += [r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize", r"\textbf{Protocol card.}",
                      r"\begin{itemize}", *(rf"\item {latex_escape(item)}" for item in self.card), r"\end{itemize}",
                      r"\end{minipage}"]
        return "\n".join(lines + [r"\end{table}", ""])

    def to_csv(self) -> str:
        # Missing values (NaN, None) are empty fields; floats keep every digit (repr).
        return self.data.to_csv(index=False, lineterminator="\n")

    def to_html(self) -> str:
        def cells(tag: str, row: list[str]) -> str:
            return "".join(f"<{tag}>{html_escape(cell)}</{tag}>" for cell in row)

        lines = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{html_escape(self.title)}</title>",
                 f"<style>{HTML_STYLE}</style></head><body>", f"<h3>{html_escape(self.title)}</h3>",
                 *(f"<p>{html_escape(text)}</p>" for text in ([self.intro] if self.intro else [])),
                 f"<table><thead><tr>{cells('th', self.header)}</tr></thead><tbody>",
                 *(f"<tr>{cells('td', row)}</tr>" for row in self.rows), "</tbody></table>",
                 *(f"<p>{html_escape(note)}</p>" for note in self.notes)]
        if self.card:
            lines += ["<p><b>Protocol card</b></p><ul>", *(f"<li>{html_escape(item)}</li>" for item in self.card),
                      "</ul>"]
        return "\n".join(lines + ["</body></html>", ""])

    def write(self, prefix: Path, formats: tuple[str, ...]) -> None:
        """prefix.<format> for each of `formats` ("md", "tex", "csv", "html")."""
        render = {"md": self.to_markdown, "tex": self.to_latex, "csv": self.to_csv, "html": self.to_html}
        for extension in formats:
            write_text_atomically(prefix.with_suffix(f".{extension}"), render[extension]())
