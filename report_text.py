"""Markdown primitives shared by every section of the report (main tables, convergence, the
paired view), so a percentage or a table cell reads the same wherever it appears. Kept in their
own module because report_markdown imports the section modules, which cannot import it back."""


def pct(value):
    """A percentage to two decimals, or an em dash where there is no number."""
    return "—" if value is None else f"{value:.2f}"


def table(header, rows):
    """A markdown table; a '|' inside a cell is escaped so it cannot split the cell."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |"
                    for row in rows]
