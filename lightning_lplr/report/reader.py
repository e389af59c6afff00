"""Read logged LPLR metrics back from TensorBoard event files and Lightning ``metrics.csv`` files.

A *run* is a directory holding TensorBoard event files (``events.out.tfevents.*``)
and/or a ``metrics.csv`` written by Lightning's ``CSVLogger``. :func:`find_runs`
accepts a run directory, a parent of many runs at any depth (for instance
``lightning_logs/`` with ``version_0``, ``version_1`` …; each run is named by its
path relative to the given directory), or a single event file or CSV file.

What is read:

* Event files: every scalar summary whose tag starts with the prefix (default
  ``"lplr/"``), as written by ``torch.utils.tensorboard.SummaryWriter`` (and so by
  Lightning's ``TensorBoardLogger``): ``simple_value`` scalars and scalar tensors of
  the ``scalars`` plugin. Histograms, images, text and the hparams records Lightning
  writes next to the scalars are skipped. Several event files in one directory (a
  resumed run) are read in name order, which is creation order.
* CSV: Lightning's ``CSVLogger`` layout, a header with a ``step`` column (and usually
  ``epoch``) and one column per logged name; rows are sparse, an empty cell means
  "not logged at this step".
* A key logged twice at the same step keeps the last value written. Keys may be
  logged at different, irregular steps: every key keeps its own steps.
  Non-finite values (NaN means "undefined at that step") are kept; the summary skips
  them where a statistic needs finite numbers.
* A directory with both event files and a ``metrics.csv`` (both loggers sharing a
  version directory) is one run: the event files win and the CSV fills in keys they
  lack.
* The run's schema marker (:mod:`lightning_lplr.reporting.marker`): the text record
  ``<prefix>schema`` of an event file (``SummaryWriter.add_text`` stores it under
  ``<prefix>schema/text_summary``), else the ``<prefix>schema/*`` hyper-parameters of the
  ``hparams.yaml`` in the run directory (what ``log_hyperparams`` of Lightning's ``CSVLogger``
  and ``TensorBoardLogger`` write; read with PyYAML, which is imported only then and is
  optional). A run without a marker was written before key-semantics version 2.
* Directories named ``lplr_pairs`` below a run hold the monitor's paired series (mirrored for
  TensorBoard's colours); they are not runs and are not read.

The event files are read record by record with TensorBoard's own protobufs and
checksum (``tensorboard.compat.proto.event_pb2``, ``masked_crc32c``) rather than
through ``EventAccumulator``, because the accumulator silently stops at the first
damaged record: here a record whose checksum fails is an error
(:data:`~lightning_lplr.report.errors.EXIT_BAD_INPUT`), and so is a truncated final
record unless ``allow_truncated`` (a run still being written) asks to read the
complete records before it. Every record's length header is verified; the data
checksum is verified for every record under 64 KiB and every record a scalar is
read from, while larger records without a scalar (images, big histograms, graphs)
are skipped unverified to keep big files fast.

Example:
    >>> s = Series.from_pairs([(3, 0.5), (1, 2.0), (3, 0.25)])
    >>> s.steps.tolist(), s.values.tolist()
    ([1, 3], [2.0, 0.25])
"""

from __future__ import annotations

import csv
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from lightning_lplr.report.errors import EXIT_BAD_INPUT, EXIT_NO_DATA, EXIT_NOT_FOUND, ReportError
from lightning_lplr.reporting.keys import ALL_KEYS, DEFAULT_PREFIX, PAIRS_DIR_NAME, SKIP_KEYS
from lightning_lplr.reporting.marker import encode_marker, marker_tag, parse_marker, unflatten_marker

__all__ = [
    "CSV_FILE_NAME",
    "HPARAMS_FILE_NAME",
    "PAIRS_DIR_NAME",
    "Run",
    "RunLocation",
    "Series",
    "find_runs",
    "is_contract_key",
    "is_event_file",
    "load_run",
    "load_runs",
    "read_event_file",
    "read_hparams_marker",
    "read_metrics_csv",
]

CSV_FILE_NAME = "metrics.csv"
"""The file name Lightning's ``CSVLogger`` writes in each version directory."""
HPARAMS_FILE_NAME = "hparams.yaml"
"""The file name Lightning's loggers write their hyper-parameters (and so the schema marker) to."""

_EVENT_MARK = "tfevents"
_SKIP_PREFIX = "skipped/"
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_SMALL_RECORD = 64 * 1024


def is_contract_key(key: str) -> bool:
    """Whether ``key`` (without prefix) is a contract key (``docs/keys.md``) or a ``skipped/*`` counter.

    Example:
        >>> is_contract_key("pl/gap"), is_contract_key("skipped/ntk_error"), is_contract_key("loss")
        (True, True, False)
    """
    return key in ALL_KEYS or key in SKIP_KEYS or key.startswith(_SKIP_PREFIX)


def is_event_file(path: str | os.PathLike[str]) -> bool:
    """Whether a file name looks like a TensorBoard event file (``events.out.tfevents.*``).

    Example:
        >>> is_event_file("lightning_logs/version_0/events.out.tfevents.1712.host.42.0")
        True
        >>> is_event_file("metrics.csv")
        False
    """
    return _EVENT_MARK in Path(path).name


@dataclass(frozen=True)
class Series:
    """One logged key: strictly increasing ``steps`` (int64) and their ``values`` (float64)."""

    steps: np.ndarray
    values: np.ndarray

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, float]]) -> Series:
        """Build from ``(step, value)`` pairs in write order; a repeated step keeps its last value."""
        by_step: dict[int, float] = {}
        for step, value in pairs:
            by_step[int(step)] = float(value)
        steps = np.array(sorted(by_step), dtype=np.int64)
        values = np.array([by_step[s] for s in steps.tolist()], dtype=np.float64)
        return cls(steps, values)

    @classmethod
    def from_arrays(cls, steps: np.ndarray, values: np.ndarray) -> Series:
        """Build from parallel arrays in write order; a repeated step keeps its last value.

        Example:
            >>> s = Series.from_arrays(np.array([3, 1, 3]), np.array([0.5, 2.0, 0.25]))
            >>> s.steps.tolist(), s.values.tolist()
            ([1, 3], [2.0, 0.25])
        """
        steps = np.asarray(steps, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
        last = np.ones(steps.shape, dtype=bool)
        last[:-1] = steps[1:] != steps[:-1]
        return cls(steps[last], values[last])

    def __len__(self) -> int:
        return int(self.steps.shape[0])

    def finite(self) -> Series:
        """The points with a finite value.

        Example:
            >>> Series.from_pairs([(0, 1.0), (1, float("nan"))]).finite().steps.tolist()
            [0]
        """
        keep = np.isfinite(self.values)
        return Series(self.steps[keep], self.values[keep])

    def between(self, start: int, end: int) -> Series:
        """The points with ``start <= step <= end``."""
        keep = (self.steps >= start) & (self.steps <= end)
        return Series(self.steps[keep], self.values[keep])


@dataclass(frozen=True)
class RunLocation:
    """Where a run's files are: its display name, directory, event files and CSV files."""

    name: str
    directory: Path
    event_files: tuple[Path, ...] = ()
    csv_files: tuple[Path, ...] = ()


@dataclass
class Run:
    """The logged LPLR data of one run.

    Attributes:
        name: display name (the path relative to the directory given on the command line).
        sources: the files read.
        formats: ``"tensorboard"`` and/or ``"csv"``.
        series: contract key (without prefix, e.g. ``"pl/gap"``) → :class:`Series`.
        other_keys: names under the prefix that are not contract keys.
        other_tags: scalar tags / CSV columns outside the prefix (used to suggest ``--prefix``).
        truncated: event files whose truncated final record was ignored (``allow_truncated``).
        marker: the run's schema marker (:mod:`lightning_lplr.reporting.marker`), ``None`` without one.
        marker_source: where the marker was read: ``"tensorboard"``, ``"hparams.yaml"`` or
            ``"monitor"`` (given in memory); ``None`` without a marker.
        notes: sentences on what the reader could not read (e.g. an ``hparams.yaml`` without PyYAML).
    """

    name: str
    sources: tuple[str, ...]
    formats: tuple[str, ...]
    series: dict[str, Series]
    other_keys: tuple[str, ...] = ()
    other_tags: tuple[str, ...] = ()
    truncated: tuple[str, ...] = field(default_factory=tuple)
    marker: dict[str, Any] | None = None
    marker_source: str | None = None
    notes: tuple[str, ...] = ()

    def get(self, key: str) -> Series | None:
        """The series of ``key`` or ``None`` when it was not logged."""
        return self.series.get(key)


def _walk_error(error: OSError) -> None:
    raise ReportError(f"{error.filename}: cannot read directory ({error.strerror})", EXIT_NOT_FOUND)


def find_runs(path: str | os.PathLike[str]) -> list[RunLocation]:
    """The runs at ``path``: a run directory, a parent of runs, an event file or a CSV file.

    Every directory at or below ``path`` holding an event file or a ``metrics.csv`` is a
    run (hidden directories and ``lplr_pairs`` directories, with all below them, are
    skipped), named by its path relative to ``path``; a
    run at ``path`` itself is named after the directory. A single file is a run named
    after the directory that holds it.

    Args:
        path: a directory or a file.

    Returns:
        The run locations, sorted by name; empty when a directory holds no run.

    Raises:
        ReportError: ``path`` does not exist or cannot be read (``EXIT_NOT_FOUND``), or is a
            file that is neither an event file nor a CSV file (``EXIT_BAD_INPUT``).
    """
    p = Path(path)
    if not p.exists():
        raise ReportError(f"{path}: no such file or directory", EXIT_NOT_FOUND)
    if p.is_file():
        name = p.resolve().parent.name or str(p)
        if is_event_file(p):
            return [RunLocation(name, p.parent, event_files=(p,))]
        if p.suffix.lower() == ".csv":
            return [RunLocation(name, p.parent, csv_files=(p,))]
        raise ReportError(
            f"{path}: neither a TensorBoard event file (events.out.tfevents.*) nor a CSV file; "
            "pass a run directory, a parent of runs, an event file or a metrics.csv",
            EXIT_BAD_INPUT,
        )
    if not p.is_dir():
        raise ReportError(f"{path}: not a regular file or directory", EXIT_NOT_FOUND)
    if not os.access(p, os.R_OK | os.X_OK):
        raise ReportError(f"{path}: cannot read directory (permission denied)", EXIT_NOT_FOUND)
    locations = []
    for dirpath, dirnames, filenames in os.walk(p, onerror=_walk_error):
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and d not in ("__pycache__", PAIRS_DIR_NAME)
        )
        directory = Path(dirpath)
        events = tuple(directory / f for f in sorted(filenames) if is_event_file(f))
        csvs = tuple(directory / f for f in sorted(filenames) if f == CSV_FILE_NAME)
        if not events and not csvs:
            continue
        rel = directory.relative_to(p)
        name = rel.as_posix() if rel != Path(".") else (p.resolve().name or str(p))
        locations.append(RunLocation(name, directory, events, csvs))
    return sorted(locations, key=lambda loc: loc.name)


class _TruncatedError(Exception):
    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


def _masked_crc32c(data: bytes) -> int:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    return int(masked_crc32c(data))


class _Record(NamedTuple):
    offset: int
    data: bytes
    crc: int


def _records(fh: BinaryIO, path: Path) -> Iterator[_Record]:
    """The TFRecords of an event file; each length header's checksum is verified here."""
    offset = 0
    while True:
        header = fh.read(_HEADER.size)
        if not header:
            return
        if len(header) < _HEADER.size:
            raise _TruncatedError(offset)
        length, header_crc = _HEADER.unpack(header)
        if _masked_crc32c(header[:8]) != header_crc:
            raise ReportError(
                f"{path}: corrupt event file (record header checksum mismatch at byte {offset})",
                EXIT_BAD_INPUT,
            )
        data = fh.read(length)
        footer = fh.read(_FOOTER.size)
        if len(data) < length or len(footer) < _FOOTER.size:
            raise _TruncatedError(offset)
        yield _Record(offset, data, _FOOTER.unpack(footer)[0])
        offset += _HEADER.size + length + _FOOTER.size


def _verify(record: _Record, path: Path) -> None:
    if _masked_crc32c(record.data) != record.crc:
        raise ReportError(
            f"{path}: corrupt event file (record data checksum mismatch at byte {record.offset})",
            EXIT_BAD_INPUT,
        )


def _scalar_of(value, plugin: str) -> float | None:
    """The float of a scalar summary value, ``None`` for anything else."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind != "tensor" or plugin not in ("scalars", ""):
        return None
    from tensorboard.util import tensor_util

    try:
        array = tensor_util.make_ndarray(value.tensor)
    except (ValueError, TypeError, KeyError):
        return None
    if array.size != 1 or array.dtype.kind not in "fiub":
        return None
    return float(array.reshape(()))


def _text_of(value: Any) -> str | None:
    """The string of a text-plugin summary value (``SummaryWriter.add_text``), ``None`` otherwise."""
    if value.WhichOneof("value") != "tensor" or not value.tensor.string_val:
        return None
    try:
        return value.tensor.string_val[0].decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass
class _Scalars:
    pairs: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    other: set[str] = field(default_factory=set)
    truncated: bool = False
    markers: list[dict[str, Any]] = field(default_factory=list)


def read_event_file(
    path: str | os.PathLike[str], prefix: str = DEFAULT_PREFIX, *, allow_truncated: bool = False
) -> tuple[dict[str, list[tuple[int, float]]], set[str], bool]:
    """The scalars under ``prefix`` in one TensorBoard event file.

    Args:
        path: an ``events.out.tfevents.*`` file.
        prefix: the metric prefix; tags are returned without it.
        allow_truncated: read the complete records before a truncated final record
            (a file still being written) instead of failing.

    Returns:
        ``(pairs, other_tags, truncated)``: key → ``[(step, value), ...]`` in write
        order, the scalar tags outside the prefix, and whether a truncated final
        record was ignored.

    Raises:
        ReportError: the file cannot be opened (``EXIT_NOT_FOUND``), a record fails its
            checksum or does not parse, or the file is truncated and ``allow_truncated``
            is false (``EXIT_BAD_INPUT``).
    """
    out = _read_events(path, prefix, allow_truncated=allow_truncated)
    return out.pairs, out.other, out.truncated


def _read_events(path: str | os.PathLike[str], prefix: str, *, allow_truncated: bool) -> _Scalars:
    """:func:`read_event_file`, plus the schema markers found in the file's text records."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2

    p = Path(path)
    out = _Scalars()
    plugins: dict[str, str] = {}
    marker_tags = (marker_tag(prefix), marker_tag(prefix) + "/text_summary")
    needle = prefix.encode("utf-8") if prefix else b""
    try:
        with open(p, "rb") as fh:
            try:
                for record in _records(fh, p):
                    small = len(record.data) <= _SMALL_RECORD
                    if small:
                        _verify(record, p)
                    elif needle not in record.data:
                        continue  # a large record (image, histogram, graph) of another tag
                    try:
                        event = event_pb2.Event.FromString(record.data)
                    except DecodeError:
                        _verify(record, p)  # name a checksum failure as such when there is one
                        raise ReportError(
                            f"{p}: corrupt event file (the record at byte {record.offset} is not a "
                            "TensorBoard event)",
                            EXIT_BAD_INPUT,
                        ) from None
                    if event.WhichOneof("what") != "summary":
                        continue
                    verified = small
                    for value in event.summary.value:
                        tag = value.tag
                        if value.HasField("metadata") and value.metadata.plugin_data.plugin_name:
                            plugins[tag] = value.metadata.plugin_data.plugin_name
                        plugin = plugins.get(tag, "")
                        if plugin == "text" and tag in marker_tags:
                            marker = parse_marker(_text_of(value) or "")
                            if marker is not None:
                                out.markers.append(marker)
                            continue
                        scalar = _scalar_of(value, plugin)
                        if scalar is None:
                            continue
                        if not verified:
                            _verify(record, p)
                            verified = True
                        if tag.startswith(prefix):
                            out.pairs.setdefault(tag[len(prefix) :], []).append((int(event.step), scalar))
                        else:
                            out.other.add(tag)
            except _TruncatedError as trunc:
                if not allow_truncated:
                    raise ReportError(
                        f"{p}: truncated event file (incomplete record at byte {trunc.offset}); if the run "
                        "is still being written, rerun with --allow-truncated to read the complete records",
                        EXIT_BAD_INPUT,
                    ) from None
                out.truncated = True
    except OSError as error:
        raise ReportError(f"{p}: cannot open ({error.strerror or error})", EXIT_NOT_FOUND) from None
    return out


def _parse_step(cell: str) -> int | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) else None


def read_metrics_csv(
    path: str | os.PathLike[str], prefix: str = DEFAULT_PREFIX
) -> tuple[dict[str, list[tuple[int, float]]], set[str]]:
    """The columns under ``prefix`` of a Lightning ``CSVLogger`` ``metrics.csv``.

    Rows without a usable ``step`` are skipped; an empty cell means "not logged at this
    step"; a cell that is not a number is skipped like an empty one.

    Args:
        path: the CSV file.
        prefix: the metric prefix; column names are returned without it.

    Returns:
        ``(pairs, other_columns)``: key → ``[(step, value), ...]`` in row order, and the
        columns outside the prefix (``step`` and ``epoch`` excluded).

    Raises:
        ReportError: the file cannot be opened (``EXIT_NOT_FOUND``); it is empty, not
            text, malformed, or has no ``step`` column (``EXIT_BAD_INPUT``).
    """
    columns, other = _read_csv_columns(path, prefix)
    pairs = {
        key: list(zip(steps.tolist(), values.tolist(), strict=True))
        for key, (steps, values) in columns.items()
    }
    return pairs, other


def _column_values(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(values, usable)`` of non-empty cells: float64, and which of them parsed as numbers."""
    try:
        return np.fromiter(map(float, texts), np.float64, len(texts)), np.ones(len(texts), dtype=bool)
    except ValueError:  # a cell that is not a number (or only blanks): parse one by one, skip it
        values = np.empty(len(texts), dtype=np.float64)
        usable = np.ones(len(texts), dtype=bool)
        for k, text in enumerate(texts):
            try:
                values[k] = float(text)
            except ValueError:
                usable[k] = False
        return values, usable


def _read_csv_columns(
    path: str | os.PathLike[str], prefix: str
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], set[str]]:
    """:func:`read_metrics_csv` column by column: key → ``(steps, values)`` arrays in row order."""
    p = Path(path)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            try:
                header = next(reader, None)
                if header is None:
                    raise ReportError(f"{p}: empty CSV file (no header row)", EXIT_BAD_INPUT)
                header = [h.strip() for h in header]
                if "step" not in header:
                    shown = ", ".join(header[:8]) + (", …" if len(header) > 8 else "")
                    raise ReportError(
                        f"{p}: no 'step' column (columns: {shown}); expected the metrics.csv of "
                        "Lightning's CSVLogger",
                        EXIT_BAD_INPUT,
                    )
                step_index = header.index("step")
                columns = [(i, h[len(prefix) :]) for i, h in enumerate(header) if h.startswith(prefix)]
                other = {h for h in header if not h.startswith(prefix) and h not in ("step", "epoch")}
                rows: list[list[str]] = []
                steps: list[int] = []
                for row in reader:
                    if len(row) <= step_index:
                        continue
                    step = _parse_step(row[step_index])
                    if step is None:
                        continue
                    rows.append(row)
                    steps.append(step)
            except csv.Error as error:
                raise ReportError(
                    f"{p}: malformed CSV at line {reader.line_num} ({error})", EXIT_BAD_INPUT
                ) from None
    except UnicodeDecodeError:
        raise ReportError(f"{p}: not a UTF-8 text CSV file", EXIT_BAD_INPUT) from None
    except OSError as error:
        raise ReportError(f"{p}: cannot open ({error.strerror or error})", EXIT_NOT_FOUND) from None
    step_array = np.array(steps, dtype=np.int64)
    width = len(header)
    # Transpose in C: pad short rows, then zip(*rows) gives one tuple of cells per column (cells past
    # the header's width are ignored, as before).
    cells_by_column = list(
        zip(*(row if len(row) >= width else row + [""] * (width - len(row)) for row in rows), strict=False)
    )
    for index, key in columns:
        cells = cells_by_column[index] if cells_by_column else ()
        if "" in cells:  # sparse: an empty cell means "not logged at this step"
            keep = np.array([k for k, cell in enumerate(cells) if cell], dtype=np.int64)
            texts: Sequence[str] = [cells[k] for k in keep.tolist()]
        else:
            keep, texts = np.arange(len(cells)), cells
        if not len(texts):
            continue
        values, usable = _column_values(texts)
        if usable.any():
            out[key] = (step_array[keep][usable], values[usable])
    return out, other


def _marker_in_params(params: Any, prefix: str) -> dict[str, Any] | None:
    """The marker in logged hyper-parameters: flat ``<prefix>schema/<field>`` keys, or ``<prefix>schema``.

    ``<prefix>schema`` may hold the marker as a mapping or as its JSON text.
    """
    if not isinstance(params, dict):
        return None
    flat = unflatten_marker({str(k): v for k, v in params.items()}, prefix)
    if flat is not None:
        return flat
    nested = params.get(marker_tag(prefix))
    if isinstance(nested, dict):
        return nested if "key_semantics_version" in nested else None
    if isinstance(nested, str):
        return parse_marker(nested)
    return None


def read_hparams_marker(
    path: str | os.PathLike[str], prefix: str = DEFAULT_PREFIX
) -> tuple[dict[str, Any] | None, str | None]:
    r"""The schema marker in a Lightning ``hparams.yaml`` (written by ``log_hyperparams``).

    PyYAML is imported here only (Lightning installs it; the report does not require it). The file
    is read with ``yaml.SafeLoader``, extended to read tags such as ``!!python/tuple`` (which
    Lightning writes) as plain lists, mappings or strings: nothing is ever constructed from a tag.

    Args:
        path: the ``hparams.yaml`` file.
        prefix: the monitor's prefix: the marker's keys are ``<prefix>schema/<field>``.

    Returns:
        ``(marker, note)``: the marker or ``None``, and a sentence when the file could not be read
        (PyYAML missing, unreadable or malformed file), else ``None``.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "hparams.yaml")
        >>> _ = open(path, "w").write("lplr/schema/key_semantics_version: 2\nlplr/schema/loss: mse\n")
        >>> read_hparams_marker(path)
        ({'key_semantics_version': 2, 'loss': 'mse'}, None)
    """
    try:
        import yaml
    except ImportError:
        return None, f"{path}: not read (PyYAML is not installed), so a schema marker kept there is unknown."

    class _SafeLoader(yaml.SafeLoader):
        """``yaml.safe_load``'s loader that reads Python-specific tags as plain data, never objects.

        Lightning writes e.g. ``!!python/tuple`` into ``hparams.yaml``, which ``safe_load`` refuses.
        """

    def _plain(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    _SafeLoader.add_multi_constructor("", _plain)
    try:
        with open(path, encoding="utf-8") as fh:
            params = yaml.load(fh, Loader=_SafeLoader)  # a SafeLoader: never builds objects
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        return None, f"{path}: could not be read ({reason}), so a schema marker kept there is unknown."
    return _marker_in_params(params, prefix), None


def load_run(location: RunLocation, prefix: str = DEFAULT_PREFIX, *, allow_truncated: bool = False) -> Run:
    """Read the files of one run (see the module docstring for the merge rules)."""
    event_pairs: dict[str, list[tuple[int, float]]] = {}
    other: set[str] = set()
    truncated: list[str] = []
    markers: list[tuple[dict[str, Any], str]] = []
    notes: list[str] = []
    for path in location.event_files:
        scalars = _read_events(path, prefix, allow_truncated=allow_truncated)
        for key, values in scalars.pairs.items():
            event_pairs.setdefault(key, []).extend(values)
        other |= scalars.other
        markers.extend((marker, "tensorboard") for marker in scalars.markers)
        if scalars.truncated:
            truncated.append(str(path))
    csv_columns: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for path in location.csv_files:
        columns, names = _read_csv_columns(path, prefix)
        for key, arrays in columns.items():
            csv_columns.setdefault(key, []).append(arrays)
        other |= names
    merged = sorted({*csv_columns, *event_pairs})
    series: dict[str, Series] = {}
    for key in merged:
        if not is_contract_key(key):
            continue
        if key in event_pairs:  # the event files win; the CSV fills in the keys they lack
            series[key] = Series.from_pairs(event_pairs[key])
        else:
            parts = csv_columns[key]
            steps = np.concatenate([s for s, _ in parts])
            series[key] = Series.from_arrays(steps, np.concatenate([v for _, v in parts]))
    formats = tuple(
        name for name, files in (("tensorboard", location.event_files), ("csv", location.csv_files)) if files
    )
    hparams = location.directory / HPARAMS_FILE_NAME
    if not markers and hparams.is_file():
        marker, note = read_hparams_marker(hparams, prefix)
        if marker is not None:
            markers.append((marker, HPARAMS_FILE_NAME))
        if note:
            notes.append(note)
    distinct = {encode_marker(m) for m, _ in markers}
    if len(distinct) > 1:
        notes.append(
            f"The run holds {len(distinct)} different schema markers (resumed with another configuration?); "
            "the first one written is read."
        )
    return Run(
        name=location.name,
        sources=tuple(str(f) for f in (*location.event_files, *location.csv_files)),
        formats=formats,
        series=series,
        other_keys=tuple(k for k in merged if not is_contract_key(k)),
        other_tags=tuple(sorted(other)),
        truncated=tuple(truncated),
        marker=markers[0][0] if markers else None,
        marker_source=markers[0][1] if markers else None,
        notes=tuple(notes),
    )


def _prefix_hint(runs: Sequence[Run], prefix: str) -> str:
    """``; did you mean --prefix X?`` when other tags end with a contract key."""
    candidates: set[str] = set()
    for run in runs:
        for tag in run.other_tags:
            for key in (*ALL_KEYS, *SKIP_KEYS):
                if tag.endswith(key) and tag != prefix + key:
                    candidates.add(tag[: len(tag) - len(key)])
    if not candidates:
        return ""
    shown = " or ".join(f"--prefix '{c}'" for c in sorted(candidates)[:3])
    return f"; the logged names suggest {shown}"


def load_runs(
    paths: Sequence[str | os.PathLike[str]],
    prefix: str = DEFAULT_PREFIX,
    *,
    allow_truncated: bool = False,
    warn: Callable[[str], None] | None = None,
) -> list[Run]:
    """Find and read every run under ``paths``; runs without LPLR keys are left out with a warning.

    Args:
        paths: run directories, parents of runs, event files or CSV files.
        prefix: the metric prefix (``"lplr/"`` by default).
        allow_truncated: tolerate a truncated final record in event files (see
            :func:`read_event_file`); each such file is reported through ``warn``.
        warn: called with a one-line message for each run left out or read partially.

    Returns:
        The runs holding at least one contract key under ``prefix``, in the order of
        ``paths`` and by name within each path. Names repeated across paths are
        prefixed with the path as given.

    Raises:
        ReportError: a path does not exist (``EXIT_NOT_FOUND``); a path holds no run, or
            no run holds a key under ``prefix`` (``EXIT_NO_DATA``); a file is damaged
            (``EXIT_BAD_INPUT``).
    """
    notify = warn or (lambda message: None)
    located: list[tuple[str, RunLocation]] = []
    for path in paths:
        found = find_runs(path)
        if not found:
            raise ReportError(
                f"{path}: no TensorBoard event files (events.out.tfevents.*) or {CSV_FILE_NAME} found",
                EXIT_NO_DATA,
            )
        located.extend((str(path), loc) for loc in found)
    counts: dict[str, int] = {}
    for _, loc in located:
        counts[loc.name] = counts.get(loc.name, 0) + 1
    runs: list[Run] = []
    empty: list[Run] = []
    for root, loc in located:
        if counts[loc.name] > 1:
            loc = RunLocation(f"{root.rstrip('/')}/{loc.name}", loc.directory, loc.event_files, loc.csv_files)
        run = load_run(loc, prefix, allow_truncated=allow_truncated)
        for path in run.truncated:
            notify(f"{path}: ignored a truncated final record (run still being written?)")
        (runs if run.series else empty).append(run)
    if not runs:
        names = ", ".join(r.name for r in empty[:5]) + (", …" if len(empty) > 5 else "")
        raise ReportError(
            f"no LPLR metrics: no run holds a key under the prefix '{prefix}' (runs read: {names})"
            + _prefix_hint(empty, prefix),
            EXIT_NO_DATA,
        )
    for run in empty:
        notify(f"skipped run '{run.name}': no keys under the prefix '{prefix}'")
    return runs
