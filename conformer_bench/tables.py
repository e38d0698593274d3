"""The one rendering layer: a record kind declares its columns once, every output format comes from them.

A :class:`Column` names a value (its CSV/JSON key), its unit, how many decimals a reader is shown and what
it counts. A :class:`Table` is columns plus rows (records, or anything the columns' getters read); it
renders as a rich table, CSV (the ``csv`` module), JSON, JSON lines, Markdown (``|`` escaped) and LaTeX
(specials escaped), and turns into a pandas DataFrame with exactly the CSV's columns and values.

Numbers are rounded here and nowhere else: :func:`rounded` for the values CSV, JSON and DataFrames hold,
:func:`shown` for the text a person reads.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import BenchError
from .files import dumps_json

if TYPE_CHECKING:
    import pandas

T = TypeVar("T")

FORMATS = ("table", "json", "jsonl", "csv", "md", "latex")
EMPTY = "—"  # what a missing value shows as in text formats (CSV and JSON hold an empty cell / null)


def parse_format(
    value: str | None, choices: Sequence[str], option: str = "--format", default: str = "table"
) -> str:
    """``--format`` read once, case-insensitively (``-f JSON`` is ``json``), checked against ``choices``."""
    if value is None:
        return default
    fmt = value.strip().lower()
    if fmt not in choices:
        raise BenchError(f"{option} {value!r} is not valid; use one of {', '.join(choices)}")
    return fmt


# --- numbers: the only rounding --------------------------------------------------------------------------


def rounded(value: Any, digits: int | None) -> Any:
    """``value`` as files and DataFrames hold it: floats rounded to ``digits`` decimals (None: as measured),
    non-finite floats as None, everything else unchanged."""
    if isinstance(value, bool) or not isinstance(value, float):
        return value
    if not math.isfinite(value):
        return None
    return value if digits is None else round(value, digits)


def shown(value: Any, digits: int | None = None, unit: str = "") -> str:
    """``value`` as a person reads it: thousands separated, ``digits`` decimals, the unit after a space."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return EMPTY
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:,.{2 if digits is None else digits}f}"
    else:
        text = str(value)
    return f"{text} {unit}" if unit and text != EMPTY else text


def fmt_int(n: int | None) -> str:
    return shown(n)


def fmt_giga(n: float | None, digits: int = 4) -> str:
    """``digits`` decimals in G; small counts switch to M or K so that they never print as 0.000 G."""
    if n is None:
        return EMPTY
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return f"{n:,.0f}"


def fmt_mib(n: float | None) -> str:
    return EMPTY if n is None else f"{n / 2**20:,.1f} MiB"


def fmt_ms(seconds: float | None) -> str:
    return EMPTY if seconds is None else f"{seconds * 1e3:,.2f} ms"


def fmt_pct(x: float | None, digits: int = 1) -> str:
    return EMPTY if x is None else f"{100 * x:.{digits}f} %"


# --- escaping -----------------------------------------------------------------------------------------------

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
}


def md_escape(text: str) -> str:
    """A Markdown table cell: ``|`` and backslashes escaped, line breaks as spaces."""
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split("\n"))


def latex_escape(text: str) -> str:
    """A LaTeX table cell with every special character escaped."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in " ".join(text.split("\n")))


# --- columns and tables -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column(Generic[T]):
    """One column: ``get`` reads its raw value from a row; ``scale`` divides it for display and files (bytes
    -> MiB: 2**20); ``digits`` is the decimals it is rounded to (None: as measured)."""

    name: str
    get: Callable[[T], Any]
    unit: str = ""
    digits: int | None = None
    help: str = ""
    scale: float | None = None

    def value(self, row: T) -> Any:
        """The value CSV, JSON and DataFrames hold (scaled, then rounded)."""
        raw = self.get(row)
        if raw is not None and self.scale is not None and not isinstance(raw, bool):
            raw = raw / self.scale
        return rounded(raw, self.digits)

    def text(self, row: T) -> str:
        """The value as a text table shows it (unit in the header, not in the cell)."""
        return shown(self.value(row), self.digits)

    @property
    def header(self) -> str:
        return f"{self.name} ({self.unit})" if self.unit else self.name


@dataclass
class Table(Generic[T]):
    """Columns and rows, rendered in any of :data:`FORMATS`; ``title`` and ``notes`` frame text formats."""

    columns: Sequence[Column[T]]
    rows: Sequence[T]
    title: str = ""
    notes: list[str] = field(default_factory=list)

    def records(self) -> list[dict[str, Any]]:
        """Each row as ``{column name: value}`` (the JSON, JSON lines and DataFrame form)."""
        return [{c.name: c.value(row) for c in self.columns} for row in self.rows]

    def texts(self) -> list[list[str]]:
        return [[c.text(row) for c in self.columns] for row in self.rows]

    def render(self, fmt: str) -> str:
        writers: dict[str, Callable[[], str]] = {
            "table": self.to_rich_text,
            "json": lambda: dumps_json(self.records()),
            "jsonl": lambda: "".join(dumps_json(r, indent=None) for r in self.records()),
            "csv": self.to_csv,
            "md": self.to_markdown,
            "latex": self.to_latex,
        }
        if fmt not in writers:
            raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        return writers[fmt]()

    def to_csv(self) -> str:
        """Values as the records hold them, one row a line; None is an empty cell."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([c.name for c in self.columns])
        for record in self.records():
            writer.writerow(["" if v is None else v for v in record.values()])
        return buf.getvalue()

    def to_markdown(self) -> str:
        head = [md_escape(c.header) for c in self.columns]
        lines = [f"**{md_escape(self.title)}**", ""] if self.title else []
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(md_escape(t) for t in row) + " |" for row in self.texts()]
        lines += [""] + [md_escape(n) for n in self.notes] if self.notes else []
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        spec = "".join("r" if c.unit or c.digits is not None else "l" for c in self.columns)
        lines = [f"% {latex_escape(self.title)}"] if self.title else []
        lines += [f"\\begin{{tabular}}{{{spec}}}", "\\hline"]
        lines.append(" & ".join(latex_escape(c.header) for c in self.columns) + r" \\")
        lines.append("\\hline")
        lines += [" & ".join(latex_escape(t) for t in row) + r" \\" for row in self.texts()]
        lines += ["\\hline", "\\end{tabular}"]
        return "\n".join(lines) + "\n"

    def to_rich(self) -> Any:
        from rich.table import Table as RichTable

        table = RichTable(title=self.title or None, caption="\n".join(self.notes) or None)
        for c in self.columns:
            table.add_column(c.header, justify="right" if c.unit or c.digits is not None else "left")
        for row in self.texts():
            table.add_row(*row)
        return table

    def to_rich_text(self, width: int = 160) -> str:
        from rich.console import Console

        console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
        console.print(self.to_rich())
        return console.export_text()

    def to_frame(self) -> pandas.DataFrame:
        """A tidy DataFrame: one row per row, built from the same values the CSV holds (a missing value is
        NaN where pandas reads an empty CSV cell as NaN)."""
        import pandas

        frame = pandas.DataFrame(self.records(), columns=[c.name for c in self.columns])
        # A column with no value at all is float NaN, as pandas reads the CSV's empty cells.
        return frame.astype(dict.fromkeys(frame.columns[frame.isna().all()], float))
