"""Avazu click logs (Kaggle CTR prediction, ``train.csv`` / ``train.gz``) -> the ingest layout.

    recsys ingest avazu data/avazu/train.gz --out data/avazu [--spec features/avazu.yaml] [--split 0.8,0.1,0.1]

The file is CSV with exactly this header (:data:`AVAZU_HEADER`)::

    id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,
    device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21

* ``click`` (0 / 1) is the label (any other value is a bad line, as in Criteo); ``id`` (unique per row) is dropped.
* ``hour`` is ``YYMMDDHH`` (e.g. ``14102100``: 2014-10-21, 00h) and becomes two features:
  ``day_of_week`` (0 = Monday .. 6 = Sunday) and ``hour_of_day`` (0 .. 23); a bad date or hour is
  a bad line naming the ``hour`` field.
* every other column is a categorical string (hex ids such as ``1fbe01fe``, small integers such
  as ``banner_pos``) -> a stable int64 raw id, blake2b of its bytes
  (:func:`recsys.data.csv_source.bytes_id`, as MovieLens strings).

The file is in time order (10 days, hour by hour), so the split is by row position like Criteo's
(first 80% train, next 10% validation, last 10% test by default): validation and test come after
every training row. Parsing, bad lines, ``--skip-bad-rows``, gzip and BOM detection are those of
:mod:`recsys.data.csv_source`. The Kaggle ``test.csv`` has no ``click`` column and is refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from recsys.data.criteo import Fields, parse_int
from recsys.data.csv_source import CsvLayout, csv_layout, ingest_delimited
from recsys.data.parquet_source import DEFAULT_FRACTIONS
from recsys.features.spec import DatasetSpec

AVAZU_HEADER = [
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]
HOUR_FEATURES = ("day_of_week", "hour_of_day")
_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (vectorized; H. Hinnant's algorithm)."""
    y = y - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def split_hour(f: Fields, j: int) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    """The ``hour`` column (``YYMMDDHH``) -> day_of_week (0 = Monday) and hour_of_day, and a bad mask."""
    value, bad = parse_int(f, [j])
    value, bad = value[:, 0], bad[:, 0] | (f.lengths(j) != 8)
    v = np.where(bad | np.isnan(value), 0, value).astype(np.int64)
    yy, mm, dd, hh = v // 1_000_000, v // 10_000 % 100, v // 100 % 100, v % 100
    year = 2000 + yy
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    month_days = np.where((mm == 2) & leap, 29, _DAYS[np.clip(mm - 1, 0, 11)])
    bad |= (mm < 1) | (mm > 12) | (dd < 1) | (dd > month_days) | (hh > 23)
    weekday = (days_from_civil(year, np.clip(mm, 1, 12), np.clip(dd, 1, 31)) + 3) % 7  # 1970-01-01 was a Thursday (3)
    return {"day_of_week": weekday, "hour_of_day": hh}, bad, "YYMMDDHH: 8 digits, a real date and an hour 00-23 (e.g. 14102100)"


def avazu_layout(path: Path, header: list[str], spec: DatasetSpec) -> CsvLayout:
    """Check the header byte for byte and map the spec's features to its columns."""
    if header == [c for c in AVAZU_HEADER if c != "click"]:
        raise ValueError(f"{path}, line 1: no 'click' column: this is the Kaggle test.csv, which has no labels; "
                         "ingest train.csv (or train.gz) and let --split make validation and test")
    if header != AVAZU_HEADER:
        raise ValueError(f"{path}, line 1: got header {','.join(header)[:200]!r}; expected the Avazu header "
                         f"{','.join(AVAZU_HEADER)!r}; for other CSV files use `recsys ingest csv --spec`")
    names = {f.name for f in spec.features}
    hour = {"hour": HOUR_FEATURES} if names & set(HOUR_FEATURES) else {}
    if "hour" in names:
        raise ValueError(f"feature spec {spec.name!r}: 'hour' is split into {list(HOUR_FEATURES)}; name those instead")
    if spec.label is not None and spec.label.name != "click":
        raise ValueError(f"feature spec {spec.name!r}: the label is {spec.label.name!r}; Avazu's label column is 'click'")
    layout = csv_layout(path, header, spec, derived=hour, derive={"hour": split_hour})
    return dataclasses.replace(layout, label_hint="Avazu's click column holds 0 or 1")


def ingest_avazu(
    path: str | Path,
    out_dir: str | Path,
    spec: DatasetSpec,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    skip_bad_rows: bool = False,
    chunk_rows: int = 200_000,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Ingest the Avazu ``train.csv`` (or its gzip) into ``out_dir``.

    Args:
        path: the CSV file.
        out_dir: output folder (see :class:`~recsys.data.writer.DatasetWriter`).
        spec: feature spec (``features/avazu.yaml``): label ``click``, ``day_of_week``,
            ``hour_of_day`` and any of the other columns as sparse features.
        fractions: (train, validation, test) fractions of the rows, in file (= time) order.
        skip_bad_rows: skip and count bad lines instead of raising.
        chunk_rows: lines parsed per block.
        log: progress printer.

    Returns:
        The manifest written to ``out_dir/manifest.json``.

    Raises:
        ValueError: not the Avazu header, or a bad line (file, line, field, value, what is allowed).
    """
    return ingest_delimited(
        path, out_dir, spec, lambda p, header: avazu_layout(p, header, spec), sep=b",",
        source={"kind": "avazu", "format": "csv"}, fractions=fractions, skip_bad_rows=skip_bad_rows,
        chunk_rows=chunk_rows, log=log,
    )
