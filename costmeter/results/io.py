"""Export results to JSON, CSV or Parquet, and import the JSON form back.

- ``json``: a list of full ``RunResult.to_dict()`` objects (raw samples included), each with its
  ``schema_version``; :func:`import_results` reads it back exactly and rejects unknown versions.
- ``csv``: the flat DataFrame of ``ResultStore.query()`` (one row per result, ms/bytes/J).
- ``parquet``: the same flat DataFrame plus ``iterations_per_sample`` and ``samples_ns``, the raw
  samples of all processes concatenated in process order (list of int64; per-run latency is
  ``sample / iterations_per_sample``). :func:`read_frame` reads CSV and Parquet back.

Files are written to a temporary name first and renamed, so a crash never leaves half a file.
pandas is imported inside the functions: importing this module stays cheap.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

from costmeter.errors import ConfigError, StoreError
from costmeter.results.schema import RunResult

if TYPE_CHECKING:
    import pandas as pd

ExportFormat = Literal["csv", "json", "parquet"]
_SUFFIX_FORMATS: dict[str, ExportFormat] = {
    ".csv": "csv",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def _format_of(path: Path, fmt: str | None) -> ExportFormat:
    chosen = fmt if fmt is not None else _SUFFIX_FORMATS.get(path.suffix.lower())
    if chosen not in ("csv", "json", "parquet"):
        raise ConfigError(
            f"unknown results format {chosen or path.suffix!r} for {path}; "
            f"use fmt='csv', 'json' or 'parquet' (or a .csv/.json/.parquet file name)"
        )
    return chosen  # type: ignore[return-value]


def _replace_atomically(path: Path, write: Any) -> None:
    """Call ``write(temporary_path)`` and move the result onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _parquet_frame(results: Sequence[RunResult]) -> pd.DataFrame:
    from costmeter.results.frames import frame_from_results

    frame = frame_from_results(results)
    frame["iterations_per_sample"] = [
        None if r.measurement is None else r.measurement.iterations_per_sample for r in results
    ]
    frame["iterations_per_sample"] = frame["iterations_per_sample"].astype("Int64")
    frame["samples_ns"] = [
        [] if r.measurement is None else [s for proc in r.measurement.samples_ns for s in proc]
        for r in results
    ]
    return frame


def export_results(
    results_or_df: Sequence[RunResult] | pd.DataFrame,
    path: Path | str,
    fmt: ExportFormat | None = None,
) -> Path:
    """Write results to ``path`` as ``fmt`` (default: from the file suffix); returns the path.

    ``results_or_df`` is a list of RunResults (e.g. ``ResultStore.results()``) or, for csv and
    parquet, a DataFrame from ``ResultStore.query()`` written as it is. JSON needs RunResults,
    since a flat DataFrame has lost the raw samples and nested fields.
    """
    import pandas as pd

    path = Path(path)
    chosen = _format_of(path, fmt)
    is_frame = isinstance(results_or_df, pd.DataFrame)
    if not is_frame:
        results = list(results_or_df)
        bad = [type(r).__name__ for r in results if not isinstance(r, RunResult)]
        if bad:
            raise ConfigError(
                f"export_results got {bad[0]} items; pass RunResults (ResultStore.results()) "
                f"or a DataFrame (ResultStore.query())"
            )
    if chosen == "json":
        if is_frame:
            raise ConfigError(
                "JSON export needs RunResults (ResultStore.results()), not a DataFrame; "
                "use fmt='csv' or 'parquet' for a DataFrame"
            )
        payload = [result.to_dict() for result in results]
        _replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=1)))
    elif chosen == "csv":
        if is_frame:
            frame = results_or_df
        else:
            from costmeter.results.frames import frame_from_results

            frame = frame_from_results(results)
        _replace_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))
    else:
        frame = results_or_df if is_frame else _parquet_frame(results)
        _replace_atomically(path, lambda tmp: frame.to_parquet(tmp, index=False))
    return path


def import_results(path: Path | str) -> list[RunResult]:
    """RunResults from a JSON file written by :func:`export_results`.

    Raises ConfigError for a missing or malformed file and StoreError (with the result's index)
    for a result whose schema version this build does not know.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read results file {path}: {exc.strerror}; check the path") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"results file {path} is not valid JSON ({exc.msg} at line {exc.lineno}); "
            f"export it with export_results(..., fmt='json')"
        ) from exc
    if isinstance(payload, dict):
        payload = [payload]
    if not isinstance(payload, list) or not all(isinstance(item, dict) for item in payload):
        raise ConfigError(
            f"results file {path} must hold a list of result objects; "
            f"export it with export_results(..., fmt='json')"
        )
    results = []
    for index, item in enumerate(payload):
        try:
            results.append(RunResult.from_dict(item))
        except StoreError as exc:
            raise StoreError(f"{path}, result {index}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{path}, result {index} is not a costmeter result ({type(exc).__name__}: {exc}); "
                f"export it with export_results(..., fmt='json')"
            ) from exc
    return results


def read_frame(path: Path | str) -> pd.DataFrame:
    """Read a CSV or Parquet file written by :func:`export_results` back into a DataFrame.

    CSV gets the dtypes of ``ResultStore.query()`` back: UTC timestamps, nullable ``threads``,
    and empty ``reasons``/``warnings``/``precision_effective`` as empty strings.
    """
    import pandas as pd

    path = Path(path)
    chosen = _format_of(path, None)
    if chosen == "json":
        raise ConfigError(f"{path} is JSON; read it with import_results()")
    if not path.exists():
        raise ConfigError(f"results file {path} does not exist; check the path")
    if chosen == "parquet":
        return pd.read_parquet(path)
    frame = pd.read_csv(path)
    for name in ("started_at", "finished_at"):
        if name in frame:
            frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601")
    for name in ("reasons", "warnings", "precision_effective"):
        if name in frame:  # an all-empty column reads as float NaN
            frame[name] = frame[name].astype(object).fillna("").astype(str)
    if "threads" in frame:
        frame["threads"] = frame["threads"].astype("Int64")
    return frame
