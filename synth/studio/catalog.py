"""The studio's read side: the runs it was opened on, their shards queried through DuckDB
(which reads only the columns a query names, so a grid page never reads the image column), one
image at a time, and the real images their spec's source lists.

Every file it serves is one of: a shard's image cell, a real image the source's manifest lists
(and that resolves inside the manifest's folder), or a run's eval/report.html.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from synth.errors import OutputError, RequestError, SynthError
from synth.layout import DATA_DIR, REJECTED_DIR, RUN_RECORD
from synth.run_record import RunRecord
from synth.shards import shard_files
from synth.sources import RealImage, read_real_images
from synth.spec import ManifestSource, Spec, load_spec

REPORT_FILE = Path("eval") / "report.html"
MAX_PAGE = 200  # samples a page may ask for
# Scores a grid can be filtered by, when the run was curated: (column, what it measures).
SCORES = {
    "qc_label_score": "the judge's probability of the image's class",
    "qc_real_similarity": "centred cosine to the nearest real train image",
}


@dataclass(frozen=True)
class StudioRun:
    """A run folder the studio shows: its spec (as the run recorded it) and its shards."""

    name: str
    path: Path
    spec: Spec
    spec_sha256: str | None  # from run.json; None while a run has not recorded one

    @property
    def curated(self) -> bool:
        return self.spec.qc.enabled

    @property
    def memorisation_threshold(self) -> float:
        """Above this similarity to a real train image, an image is flagged."""
        return self.spec.qc.max_real_similarity

    def data_files(self) -> list[Path]:
        """The complete shards now (a run in progress gains more; temporary files are hidden)."""
        return [shard.path for shard in shard_files(self.path / DATA_DIR)]

    def rejected_files(self) -> list[Path]:
        return [shard.path for shard in shard_files(self.path / REJECTED_DIR)]

    @property
    def report(self) -> Path | None:
        """eval/report.html, if it is a file inside the run folder (a symlink out is not)."""
        path = (self.path / REPORT_FILE).resolve()
        inside = path.is_relative_to(self.path.resolve())
        return path if inside and path.is_file() else None

    def rows(self) -> int:
        """Images in the run's shards, from the Parquet footers alone."""
        return sum(pq.ParquetFile(path).metadata.num_rows for path in self.data_files())


def open_runs(folders: list[Path]) -> list[StudioRun]:
    """The runs in these folders, named by folder (a repeated name gets -2, -3...)."""
    runs: list[StudioRun] = []
    names: set[str] = set()
    for folder in folders:
        folder = Path(folder).resolve()
        spec_file = folder / "spec.yaml"
        if not spec_file.is_file():
            raise OutputError(
                f"{folder}: not a synth run folder (no spec.yaml); give the folder a "
                "`synth run` wrote, or --spec SPEC for its output.dir"
            )
        name, n = folder.name, 1
        while name in names:
            n += 1
            name = f"{folder.name}-{n}"
        names.add(name)
        runs.append(StudioRun(name, folder, load_spec(spec_file), _spec_sha256(folder)))
    return runs


def _spec_sha256(folder: Path) -> str | None:
    try:
        return RunRecord.from_json((folder / RUN_RECORD).read_bytes()).spec_sha256
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class SampleQuery:
    """A grid page's filters. Scores filter only curated runs; real rows have no seed,
    attempt or scores, so those filters leave them out."""

    label: str | None = None
    q: str | None = None  # text the prompt (a real image's caption) contains, any case
    seed: int | None = None
    attempt: int | None = None
    status: Literal["kept", "rejected", "all"] = "kept"
    source: Literal["synthetic", "real", "all"] = "synthetic"
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    passed: bool | None = None
    flagged: bool | None = None  # memorisation: similarity above the run's threshold
    limit: int = 48
    offset: int = 0


@dataclass(frozen=True)
class Page:
    total: int
    samples: list[dict]


def where_clause(query: SampleQuery, threshold: float) -> tuple[str, list]:
    """The SQL filter for a query, with its parameters (user text is never SQL)."""
    terms, params = [], []
    if query.label is not None:
        terms.append("label = ?")
        params.append(query.label)
    if query.q:
        escaped = query.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        terms.append("prompt ILIKE ? ESCAPE '\\'")
        params.append(f"%{escaped}%")
    for column in ("seed", "attempt"):
        value = getattr(query, column)
        if value is not None:
            terms.append(f"{column} = ?")
            params.append(value)
    for column, (low, high) in query.ranges.items():
        if column not in SCORES:
            raise ValueError(column)
        if low is not None:
            terms.append(f"{column} >= ?")
            params.append(low)
        if high is not None:
            terms.append(f"{column} <= ?")
            params.append(high)
    if query.passed is not None:
        terms.append("qc_passed = ?")
        params.append(query.passed)
    if query.flagged is not None:  # like every score filter, never true of a real row
        terms.append(f"qc_real_similarity {'>' if query.flagged else '<='} ?")
        params.append(threshold)
    return (" WHERE " + " AND ".join(terms)) if terms else "", params


class Catalog:
    """Queries over the runs' shards and real images. Thread-safe: one DuckDB cursor a call."""

    def __init__(self, runs: list[StudioRun]) -> None:
        if not runs:
            raise OutputError("no run to show; give RUN_DIR(s), or --spec SPEC")
        self.runs = {run.name: run for run in runs}
        self._db = duckdb.connect(":memory:")
        self._lock = threading.Lock()
        self._real: dict[str, dict[str, RealImage] | str] = {}

    def run(self, name: str | None) -> StudioRun:
        if name is None:
            return next(iter(self.runs.values()))
        if name not in self.runs:
            raise RequestError("run", f"no run named {name!r}; open runs: {list(self.runs)}", 404)
        return self.runs[name]

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of its own for the calling thread (the connection itself is not
        thread-safe; its cursors are)."""
        with self._lock:
            return self._db.cursor()

    def _real_table(self, run: StudioRun) -> str:
        return f"real_{list(self.runs).index(run.name)}"

    # --- real images ----------------------------------------------------------------------

    def real_images(self, run: StudioRun) -> dict[str, RealImage]:
        """The source's real images by id, read once. A source the studio cannot read (moved
        or deleted since the run) leaves the run without real images, and says why."""
        with self._lock:
            if run.name not in self._real:
                try:
                    images = {image.image_id: image for image in read_real_images(run.spec)}
                except (SynthError, OSError) as err:
                    self._real[run.name] = f"the real images cannot be read: {err}"
                else:
                    self._real[run.name] = images
                    self._db.execute(f"DROP TABLE IF EXISTS {self._real_table(run)}")
                    frame = pd.DataFrame(  # noqa: F841  (DuckDB reads it by name)
                        {
                            "sample_id": [i.image_id for i in images.values()],
                            "label": [i.label for i in images.values()],
                            "prompt": [i.caption for i in images.values()],
                            "split": [i.split for i in images.values()],
                        }
                    )
                    self._db.execute(
                        f"CREATE TABLE {self._real_table(run)} AS SELECT "
                        "sample_id::VARCHAR AS sample_id, label::VARCHAR AS label, "
                        "prompt::VARCHAR AS prompt, split::VARCHAR AS split FROM frame"
                    )
            found = self._real[run.name]
        return found if isinstance(found, dict) else {}

    def real_note(self, run: StudioRun) -> str | None:
        self.real_images(run)
        found = self._real[run.name]
        return found if isinstance(found, str) else None

    def real_image_file(self, run: StudioRun, image_id: str) -> Path:
        """A real image's file, if the manifest lists it and it resolves inside the manifest's
        folder (a symlink out of it is refused)."""
        image = self.real_images(run).get(image_id)
        if image is None:
            raise RequestError("id", f"run {run.name}: no real image {image_id!r}", 404)
        root = _image_root(run.spec).resolve()
        path = image.path.resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise RequestError("id", f"real image {image_id!r} is not a file under {root}", 404)
        return path

    # --- synthetic rows -------------------------------------------------------------------

    def samples(self, run: StudioRun, query: SampleQuery) -> Page:
        parts = self._parts(run, query)
        if not parts:
            return Page(0, [])
        rows = " UNION ALL BY NAME ".join(parts)
        where, params = where_clause(query, run.memorisation_threshold)
        cursor = self._cursor()
        try:
            total = cursor.execute(f"SELECT count(*) FROM ({rows}){where}", params).fetchone()[0]
            result = cursor.execute(
                f"SELECT * FROM ({rows}){where} "
                "ORDER BY source DESC, sample_id, attempt NULLS FIRST, status LIMIT ? OFFSET ?",
                [*params, query.limit, query.offset],
            )
            names = [d[0] for d in result.description]
            samples = [_jsonable(dict(zip(names, row, strict=True))) for row in result.fetchall()]
        except duckdb.BinderException as err:
            column = str(err).split('"')[1] if '"' in str(err) else "query"
            raise RequestError(
                column, f"run {run.name} has no column {column} (it was not curated)"
            ) from None
        finally:
            cursor.close()
        return Page(int(total), samples)

    def _parts(self, run: StudioRun, query: SampleQuery) -> list[str]:
        parts = []
        if query.source in ("synthetic", "all"):
            if query.status in ("kept", "all") and (files := run.data_files()):
                parts.append(_shard_select(files, "kept"))
            if query.status in ("rejected", "all") and (files := run.rejected_files()):
                parts.append(_shard_select(files, "rejected"))
        if (
            query.source in ("real", "all")
            and query.status in ("kept", "all")
            and self.real_images(run)
        ):
            scores = "".join(f", NULL::DOUBLE AS {column}" for column in SCORES if run.curated) + (
                ", NULL::BOOLEAN AS qc_passed" if run.curated else ""
            )
            parts.append(
                "SELECT *, NULL::BIGINT AS seed, NULL::INTEGER AS attempt, 'real' AS source, "
                f"'real' AS status{scores} FROM {self._real_table(run)}"
            )
        return parts

    def sample(self, run: StudioRun, sample_id: str) -> tuple[dict, list[dict]]:
        """A sample's kept row (or, when every render was rejected and it was dropped, its last
        rejected one) and its rejected renders, in attempt order."""
        rows = self.rows(run, sample_id)
        kept = [r for r in rows if r["status"] == "kept"]
        rejected = [r for r in rows if r["status"] == "rejected"]
        if not rows:
            raise RequestError("sample_id", f"run {run.name}: no sample {sample_id!r}", 404)
        return (kept or rejected)[-1], rejected

    def rows(self, run: StudioRun, sample_id: str) -> list[dict]:
        """Every stored render of a sample, kept and rejected, in attempt order."""
        query = SampleQuery(status="all", limit=MAX_PAGE)
        parts = self._parts(run, query)
        if not parts:
            return []
        cursor = self._cursor()
        try:
            result = cursor.execute(
                f"SELECT * FROM ({' UNION ALL BY NAME '.join(parts)}) WHERE sample_id = ? "
                "ORDER BY attempt",
                [sample_id],
            )
            names = [d[0] for d in result.description]
            return [_jsonable(dict(zip(names, row, strict=True))) for row in result.fetchall()]
        finally:
            cursor.close()

    def image(self, run: StudioRun, sample_id: str, attempt: int | None = None) -> bytes:
        """One image's bytes exactly as stored: the kept row's, or a given attempt's (kept or
        rejected). Only the matching row groups' image cells are read."""
        for files in (run.data_files(), run.rejected_files() if attempt is not None else []):
            if not files:
                continue
            cursor = self._cursor()
            try:
                condition, params = "sample_id = ?", [sample_id]
                if attempt is not None:
                    condition += " AND attempt = ?"
                    params.append(attempt)
                found = cursor.execute(
                    f"SELECT image.bytes FROM {_read_parquet(files)} WHERE {condition} LIMIT 1",
                    params,
                ).fetchone()
            finally:
                cursor.close()
            if found is not None:
                return bytes(found[0])
        what = f"sample {sample_id!r}" + (f" attempt {attempt}" if attempt is not None else "")
        raise RequestError("sample_id", f"run {run.name}: no {what}", 404)


def _image_root(spec: Spec) -> Path:
    """The folder a source's real images must lie in: a manifest's own folder, or the
    source's folder (phantom, iu_xray)."""
    if isinstance(spec.source, ManifestSource):
        return Path(spec.source.path).parent
    return Path(spec.source.path)


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _read_parquet(files: list[Path]) -> str:
    listed = ", ".join(_sql_string(str(path)) for path in files)
    return f"read_parquet([{listed}], union_by_name = true)"


def _shard_select(files: list[Path], status: str) -> str:
    return (
        f"SELECT * EXCLUDE (image), 'synthetic' AS source, '{status}' AS status "
        f"FROM {_read_parquet(files)}"
    )


def _jsonable(row: dict) -> dict:
    """Non-finite floats become null: JSON has no NaN."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in row.items()
    }
