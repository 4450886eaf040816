"""Local training data: JSONL, CSV and TSV files, ``datasets.Dataset`` objects or lists of dicts.

Classification needs a text column and an integer label column (or string labels with a
``label_names`` list fixing their order, identical on every client). Causal LM needs either
``prompt`` + ``response`` columns (the loss covers the response tokens only) or one ``text``
column (the loss covers every token). Column names are configurable.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedlora_client._errors import DataColumnError, DataError, DataFileNotFoundError
from fedlora_client.protocol import TaskType

IGNORE_INDEX = -100
DataSource = str | Path | Sequence[Mapping[str, Any]] | Any
"""A file path, a ``datasets.Dataset`` or a sequence of dicts."""


@dataclass(frozen=True)
class DataFields:
    """Which columns hold what. ``label_names`` maps string labels to ids by position."""

    text_field: str = "text"
    label_field: str = "label"
    prompt_field: str = "prompt"
    response_field: str = "response"
    label_names: list[str] | None = None


@dataclass
class EncodedData:
    """Tokenised examples, ready for batching with :meth:`batch`."""

    task_type: TaskType
    input_ids: list[list[int]]
    targets: list[list[int]] | list[int]
    pad_id: int
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Right-padded tensors for ``indices``: input_ids, attention_mask, labels."""
        rows = [self.input_ids[i] for i in indices]
        width = max((len(r) for r in rows), default=1)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, row in enumerate(rows):
            ids[j, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[j, : len(row)] = 1
        if self.task_type is TaskType.SEQ_CLS:
            labels = torch.tensor([self.targets[i] for i in indices], dtype=torch.long)
        else:
            labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
            for j, i in enumerate(indices):
                target = self.targets[i]
                assert isinstance(target, list)
                labels[j, : len(target)] = torch.tensor(target, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _read_file(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    if not path.is_file():
        raise DataFileNotFoundError(f"data file {path} does not exist: check data.path")
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json"}:
        records: list[dict[str, Any]] = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
                if not isinstance(value, dict):
                    raise DataError(f"{path}:{number}: each line must be a JSON object")
                records.append(value)
        columns = sorted({key for record in records for key in record})
        return records, columns
    if suffix in {".csv", ".tsv"}:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            rows = [dict(row) for row in reader]
            return rows, list(reader.fieldnames or [])
    raise DataError(f"{path}: unsupported data format {suffix!r}; use .jsonl, .csv or .tsv")


def load_records(source: DataSource) -> tuple[list[dict[str, Any]], list[str], str]:
    """Rows, column names and a description of ``source``."""
    if isinstance(source, str | Path):
        path = Path(source).expanduser()
        records, columns = _read_file(path)
        return records, columns, str(path)
    if hasattr(source, "column_names") and hasattr(source, "__iter__"):  # datasets.Dataset
        return [dict(row) for row in source], list(source.column_names), "datasets.Dataset"
    if isinstance(source, Sequence) and not isinstance(source, str):
        records = [dict(row) for row in source if isinstance(row, Mapping)]
        if len(records) != len(source):
            raise DataError("in-memory data must be a sequence of dicts (column -> value)")
        return records, sorted({k for r in records for k in r}), "in-memory records"
    raise DataError(f"unsupported data source {type(source).__name__}: give a path or a Dataset")


def _column(records: list[dict[str, Any]], name: str, columns: list[str], src: str) -> list[Any]:
    if name not in columns:
        raise DataColumnError(name, columns, src)
    values = [record.get(name) for record in records]
    for number, value in enumerate(values, start=1):
        if value is None:
            raise DataError(f"{src}: row {number} has no value in column {name!r}")
    return values


def _label_ids(raw: Iterable[Any], names: list[str] | None, num_labels: int, src: str) -> list[int]:
    ids: list[int] = []
    for number, value in enumerate(raw, start=1):
        if names is not None and str(value) in names:
            ids.append(names.index(str(value)))
            continue
        try:
            label = int(value)
        except (TypeError, ValueError):
            raise DataError(
                f"{src}: row {number} label {value!r} is not an integer; list the label "
                "names in order with data.label_names"
            ) from None
        if not 0 <= label < num_labels:
            raise DataError(f"{src}: row {number} label {label} is outside [0, {num_labels})")
        ids.append(label)
    return ids


HOLDOUT_SALT = b"fedlora-holdout-v1\n"


def holdout_split(
    records: Sequence[Mapping[str, Any]],
    fraction: float,
    *,
    max_examples: int,
    min_examples: int,
) -> tuple[list[int], list[int]]:
    """(training rows, held-out evaluation rows) of ``records``, by row index.

    Each row's side is decided by its own content alone: it is held out when the sha256 of its
    JSON (sorted keys), read as a number in [0, 1), is below ``fraction``; if that holds out
    more than ``max_examples`` rows, the ones with the lowest hashes are kept. So about
    ``fraction`` of the rows are held out, the same ones every round and on every restart;
    reordering or appending rows moves no row to the other side (until the cap is reached);
    and duplicate rows land on the same side, so an exact copy of an evaluation row is never
    trained on. Fewer than ``min_examples`` held-out rows would say nothing: then nothing is
    held out.
    """
    if fraction <= 0:
        return list(range(len(records))), []
    digests = [
        hashlib.sha256(HOLDOUT_SALT + json.dumps(r, sort_keys=True, default=str).encode()).digest()
        for r in records
    ]
    bar = int(fraction * 2**64)
    candidates = sorted(
        (i for i, d in enumerate(digests) if int.from_bytes(d[:8], "big") < bar),
        key=lambda i: digests[i],
    )
    if len(candidates) > max_examples:
        cut = digests[candidates[max_examples - 1]]  # duplicates of the last one come along
        candidates = [i for i in candidates if digests[i] <= cut]
    if len(candidates) < min_examples:
        return list(range(len(records))), []
    held = set(candidates)
    return [i for i in range(len(records)) if i not in held], sorted(held)


def check_data(
    source: DataSource,
    task_type: TaskType | str,
    *,
    fields: DataFields | None = None,
    num_labels: int = 2,
) -> int:
    """Check ``source`` the way training will read it, without tokenising; returns its size.

    The file exists and parses, the columns ``task_type`` needs are there with a value in
    every row, and (classification) every label is an integer in ``[0, num_labels)`` or one of
    ``label_names``. Raises :class:`DataFileNotFoundError`, :class:`DataColumnError` or
    :class:`DataError`, naming the file, row and setting to fix. The SDK runs this before it
    takes a task, so a client that cannot train never holds one.
    """
    fields = fields or DataFields()
    task = TaskType(task_type)
    records, columns, src = load_records(source)
    if not records:
        raise DataError(f"{src}: no examples")
    if task is TaskType.SEQ_CLS:
        _column(records, fields.text_field, columns, src)
        raw = _column(records, fields.label_field, columns, src)
        _label_ids(raw, fields.label_names, num_labels, src)
    elif fields.prompt_field in columns and fields.response_field in columns:
        _column(records, fields.prompt_field, columns, src)
        _column(records, fields.response_field, columns, src)
    else:
        _column(records, fields.text_field, columns, src)
    return len(records)


def encode_data(
    source: DataSource,
    task_type: TaskType | str,
    tokenizer: Any,
    *,
    max_seq_len: int,
    fields: DataFields | None = None,
    num_labels: int = 2,
    rows: Sequence[int] | None = None,
) -> EncodedData:
    """Read ``source`` and tokenise it for ``task_type`` (truncating to ``max_seq_len``);
    only the records at ``rows`` (0-based), when given (see :func:`holdout_split`)."""
    fields = fields or DataFields()
    task = TaskType(task_type)
    records, columns, src = load_records(source)
    if rows is not None:
        records = [records[i] for i in rows]
    if not records:
        raise DataError(f"{src}: no examples")
    if task is TaskType.SEQ_CLS:
        texts = _column(records, fields.text_field, columns, src)
        labels = _label_ids(
            _column(records, fields.label_field, columns, src), fields.label_names, num_labels, src
        )
        enc = tokenizer([str(t) for t in texts], truncation=True, max_length=max_seq_len)
        return EncodedData(task, list(enc["input_ids"]), labels, tokenizer.pad_token_id, src)
    inputs: list[list[int]] = []
    targets: list[list[int]] = []
    if fields.prompt_field in columns and fields.response_field in columns:
        prompts = _column(records, fields.prompt_field, columns, src)
        responses = _column(records, fields.response_field, columns, src)
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for prompt, response in zip(prompts, responses, strict=True):
            head = tokenizer(str(prompt))["input_ids"]
            tail = tokenizer(str(response), add_special_tokens=False)["input_ids"] + eos
            ids = (head + tail)[:max_seq_len]
            inputs.append(ids)
            targets.append(([IGNORE_INDEX] * len(head) + tail)[:max_seq_len])
    else:
        texts = _column(records, fields.text_field, columns, src)
        for text in texts:
            ids = tokenizer(str(text), truncation=True, max_length=max_seq_len)["input_ids"]
            inputs.append(list(ids))
            targets.append(list(ids))
    return EncodedData(task, inputs, targets, tokenizer.pad_token_id, src)
