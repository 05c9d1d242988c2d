"""Rows of a text task's files, each checked: the readers and the rules shared by data=text and manifests.

`validate_file` reads a JSON Lines / JSON / CSV / Parquet file row by row with Python's own readers
(so that a problem is named by file, line and field) and applies `TextSchema.item` to every row: the
input, the references, the fields the prompt uses. `loramcl.data.text` then loads the rows through
Hugging Face `datasets`; `loramcl.data.prepare` reads audio / image manifests with the same rules.
"""

from __future__ import annotations

import csv
import json
import string
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from loramcl.data.hdf5 import DataFormatError

FORMATS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
           ".pq": "parquet"}


def file_format(path: str | Path, fmt: str = "auto") -> str:
    """"json" | "csv" | "parquet" from `fmt` or the file's extension."""
    if fmt != "auto":
        if fmt not in set(FORMATS.values()):
            raise ValueError(f"data.format must be auto, json, csv or parquet, got {fmt!r}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: cannot tell its format from the extension {suffix or '(none)'!r} (known: "
                         f"{', '.join(FORMATS)}); set data.format=json|csv|parquet")
    return FORMATS[suffix]


def template_fields(template: str) -> list[str]:
    """The field names a `str.format` template uses ("{input} ({style})" -> ["input", "style"])."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ValueError(f"data.prompt={template!r} is not a valid template: {err} (write {{{{ and }}}} for literal "
                         f"braces)") from None
    bad = [n for n in names if not n or not n.isidentifier()]
    if bad:
        raise ValueError(f"data.prompt={template!r}: every {{...}} must name a field, e.g. {{input}} (got "
                         f"{{{bad[0]}}})")
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------------- reading rows
def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, row) of a JSON Lines file, or of a JSON file holding one list of objects."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        for i, row in enumerate(rows):
            yield f"{path}: item {i}", row
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}:{number}: not a JSON object ({err.msg} at column {err.colno})") from None
        yield f"{path}:{number}", row


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise DataFormatError(f"{path}:1: no header line (the first line names the fields, e.g. input,references)")
        start = 2
        for row in reader:
            if None in row:  # more cells than the header has names
                raise DataFormatError(f"{path}:{start}: {len(reader.fieldnames) + len(row[None])} cells but the "
                                      f"header names {len(reader.fieldnames)} fields")
            yield f"{path}:{start}", row
            start = reader.line_num + 1


def _table_rows(table: Any, label: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(table):
        yield f"{label}: row {i}", row


class TextSchema:
    """Where inputs and references are in a row, and the checks each row must pass."""

    def __init__(self, input_field: str = "input", reference_field: str | Sequence[str] = "references",
                 id_field: Optional[str] = None, prompt: str = "{input}"):
        self.input_field = input_field
        self.reference_fields = [reference_field] if isinstance(reference_field, str) else list(reference_field)
        if not self.reference_fields:
            raise ValueError("data.reference_field names no field")
        self.id_field = id_field
        self.prompt = prompt
        self.prompt_fields = template_fields(prompt)

    def references(self, row: dict, where: str, csv_cells: bool) -> list[str]:
        refs: list[str] = []
        for field in self.reference_fields:
            value = row.get(field)
            if value is None:
                if len(self.reference_fields) == 1:
                    raise DataFormatError(f"{where}: field {field!r} is missing (the references; data.reference_field)")
                continue
            if csv_cells and len(self.reference_fields) == 1 and isinstance(value, str) and value.lstrip().startswith("["):
                try:  # a CSV cell holding a JSON list of references
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            if isinstance(value, str) and not value.strip():
                if len(self.reference_fields) > 1:  # an empty cell of a reference column
                    continue
                raise DataFormatError(f"{where}: field {field!r} is empty (the references; data.reference_field)")
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, (list, tuple)) and not hasattr(values, "tolist"):
                raise DataFormatError(f"{where}: field {field!r} must be a string or a list of strings, got "
                                      f"{type(value).__name__}")
            values = list(values.tolist() if hasattr(values, "tolist") else values)
            for j, ref in enumerate(values):
                if not isinstance(ref, str):
                    raise DataFormatError(f"{where}: field {field!r}: reference {j} is a {type(ref).__name__}, not "
                                          f"a string")
                if not ref.strip():
                    if len(self.reference_fields) > 1:  # an empty cell of a reference column
                        continue
                    raise DataFormatError(f"{where}: field {field!r}: reference {j} is empty")
                refs.append(ref.strip())
        if not refs:
            names = ", ".join(repr(f) for f in self.reference_fields)
            raise DataFormatError(f"{where}: field {names} holds no reference (an empty list or empty cells)")
        return refs

    def item(self, row: Any, where: str, index: int, csv_cells: bool = False, references: bool = True) -> dict:
        """The validated item of one row: id, source (the input), references, the prompt's fields.
        `references=False` (new inputs, predict.py): references are kept when the row has them."""
        if not isinstance(row, dict):
            raise DataFormatError(f"{where}: a row must be a JSON object with fields, got {type(row).__name__}")
        source = row.get(self.input_field)
        if source is None:
            raise DataFormatError(f"{where}: field {self.input_field!r} is missing (the input; data.input_field; "
                                  f"this row has {', '.join(map(repr, row)) or 'no fields'})")
        if not isinstance(source, str):
            raise DataFormatError(f"{where}: field {self.input_field!r} must be a string, got {type(source).__name__}")
        if not source.strip():
            raise DataFormatError(f"{where}: field {self.input_field!r} is empty")
        fields = {}
        for name in self.prompt_fields:
            if row.get(name) is None:
                raise DataFormatError(f"{where}: field {name!r} is missing (data.prompt uses it)")
            fields[name] = str(row[name])
        item_id = str(row[self.id_field]) if self.id_field and row.get(self.id_field) is not None else str(index)
        if self.id_field and row.get(self.id_field) is None and references:  # new inputs: their row number
            raise DataFormatError(f"{where}: field {self.id_field!r} is missing (data.id_field)")
        has = any(row.get(f) not in (None, "") for f in self.reference_fields)
        refs = self.references(row, where, csv_cells) if references or has else []
        return {"id": item_id, "source": source, "references": refs, "fields": fields}


def validate_file(path: str | Path, schema: TextSchema, fmt: str = "auto") -> int:
    """Check every row of a local file (one line naming file, line and field on the first bad one);
    returns the number of rows."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    kind = file_format(path, fmt)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path).to_pylist()
        except Exception as err:
            raise DataFormatError(f"{path}: not a readable Parquet file ({' '.join(str(err).split())[:160]})") from None
        rows = _table_rows(table, str(path))
    else:
        rows = _json_rows(path) if kind == "json" else _csv_rows(path)
    count = 0
    for count, (where, row) in enumerate(rows, start=1):
        schema.item(row, where, count - 1, csv_cells=kind == "csv")
    if count == 0:
        raise DataFormatError(f"{path}: holds no rows")
    return count


def input_rows(path: str | Path, schema: TextSchema) -> list[dict]:
    """New inputs from a file (predict.py): a .txt file holds one input per line (blank lines skipped);
    JSON Lines / JSON / CSV / Parquet rows as in training, references optional."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"input_file={path} does not exist" if not path.exists() else f"input_file={path} is "
                                f"not a file")
    if path.suffix.lower() in (".txt", ""):
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = [(f"{path}:{n}", {schema.input_field: line}) for n, line in enumerate(lines, start=1) if line.strip()]
    else:
        kind = file_format(path)
        if kind == "parquet":
            import pyarrow.parquet as pq

            rows = list(_table_rows(pq.read_table(path).to_pylist(), str(path)))
        else:
            rows = list(_json_rows(path) if kind == "json" else _csv_rows(path))
    if not rows:
        raise DataFormatError(f"input_file={path} holds no input")
    return [schema.item(row, where, i, csv_cells=path.suffix.lower() in (".csv", ".tsv"), references=False)
            for i, (where, row) in enumerate(rows)]
