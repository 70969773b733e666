"""Dataset discovery and validation.

Two layouts are understood:

* a folder with one sub-folder per class (``data/cat/*.jpg``, ``data/dog/*.png``), images found
  recursively inside each class folder, extensions matched in any case;
* a CSV with a file column and a label column, paths relative to the data folder or to the CSV.

A CSV may also label an image several times (multi-label data, :mod:`autocls.data.multilabel`): its
label cells list the labels separated by ``;`` (or another ``label_delimiter``), or it has one 0/1
column per label.

The result is a :class:`LabelledImages`: image paths, integer labels (or, for multi-label data,
an images x labels 0/1 matrix) and the sorted class names.
Everything that can be checked without decoding pixels is checked here, with messages that name
the file or class and say what to do.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from autocls.data.multilabel import DELIMITER, label_sets, split_labels
from autocls.data.pixels import IMAGE_ERRORS
from autocls.runtime.errors import AutoclsError, SettingError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
FILE_COLUMN_NAMES = ("file", "filename", "file_name", "path", "filepath", "image", "image_path", "img", "name")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "class_name", "target", "category", "y")


@dataclass(frozen=True)
class LabelledImages:
    """Image files with integer labels; ``class_names[label]`` is the label's name (sorted).

    Multi-label data has a 0/1 matrix of images x labels instead (``labels[i, j]``: image ``i`` has
    label ``class_names[j]``)."""

    paths: tuple[Path, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    def class_counts(self) -> dict[str, int]:
        """Images per class (per label, for multi-label data)."""
        if self.multilabel:
            counts = self.labels.sum(axis=0)
        else:
            counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}

    def label_names(self) -> list[str]:
        """Each image's class name (its labels joined by ``;`` for multi-label data)."""
        if self.multilabel:
            return label_sets(self.labels, self.class_names)
        return [self.class_names[label] for label in self.labels]

    def subset(self, keep: np.ndarray | list[int]) -> LabelledImages:
        """The images at positions ``keep``; class names stay the same."""
        keep = np.asarray(keep, dtype=np.int64)
        return LabelledImages(tuple(self.paths[i] for i in keep), self.labels[keep], self.class_names)

    def fingerprint(self) -> str:
        """A hash of file names, sizes, modification times and labels: changes when the data does."""
        digest = hashlib.sha256()
        labels = self.labels if not self.multilabel else ["".join(map(str, row)) for row in self.labels]
        for path, label in zip(self.paths, labels):
            stat = path.stat()
            # file names are bytes to the OS: one that is not valid UTF-8 (a Latin-1 name from an old
            # camera) is hashed as the bytes it is; valid names hash exactly as before
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode("utf-8", "surrogateescape"))
        digest.update("\0".join(self.class_names).encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:16]


def file_index(data: LabelledImages) -> dict[str, list]:
    """``{path: [size, mtime_ns, class name]}``: what :meth:`LabelledImages.fingerprint` hashes, kept
    so that a change can be described, not only detected."""
    index = {}
    for path, name in zip(data.paths, data.label_names()):
        stat = path.stat()
        index[str(path)] = [stat.st_size, stat.st_mtime_ns, name]
    return index


def content_index(data: LabelledImages, content: Sequence[str], root: Path) -> dict[str, list]:
    """``{path under root: [size, content hash, class name]}`` of decoded images (``content[i]`` is
    ``data.paths[i]``'s hash): how a study knows its data, whatever the root it is under on a
    machine and whatever the files' modification times."""
    index = {}
    for path, digest, name in zip(data.paths, content, data.label_names(), strict=True):
        try:
            key = path.relative_to(root).as_posix()
        except ValueError:  # outside the root (discovery refuses those): known by its whole path
            key = str(path)
        index[key] = [path.stat().st_size, digest, name]
    return index


def index_fingerprint(index: dict[str, list]) -> str:
    """A hash of a :func:`content_index`, in path order: equal exactly when the indexes are."""
    digest = hashlib.sha256()
    for key in sorted(index):
        size, content, name = index[key]
        digest.update(f"{key}\0{size}\0{content}\0{name}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def describe_changes(before: dict[str, list], after: dict[str, list]) -> str:
    """How two :func:`file_index` results differ: '12 files added, 0 removed, 3 modified'."""
    added = len(after.keys() - before.keys())
    removed = len(before.keys() - after.keys())
    modified = sum(1 for path in before.keys() & after.keys() if before[path] != after[path])
    return f"{added} files added, {removed} removed, {modified} modified or relabelled"


@dataclass(frozen=True)
class DataSpec:
    """Where a study's images and labels come from; stored with the study so refit finds them again."""

    source: str
    labels_csv: str | None = None
    file_column: str | None = None
    label_column: str | None = None
    label_delimiter: str | None = None  # between an image's labels; None: ';' where a cell has several

    @classmethod
    def of(cls, source: str | Path, labels_csv: str | Path | None = None, **columns: str | None) -> DataSpec:
        resolve = lambda p: str(Path(p).expanduser().resolve())  # noqa: E731
        return cls(resolve(source), resolve(labels_csv) if labels_csv else None, **columns)

    @property
    def root(self) -> Path:
        """The folder the images' paths are taken relative to: the data folder, or a CSV's folder."""
        path = Path(self.source)
        return path.parent if path.suffix.lower() == ".csv" and not path.is_dir() else path

    def discover(self) -> LabelledImages:
        return discover(
            self.source,
            self.labels_csv,
            file_column=self.file_column,
            label_column=self.label_column,
            label_delimiter=self.label_delimiter,
        )

    @property
    def name(self) -> str:
        """A study name derived from the data: the folder's (or CSV's) name."""
        path = Path(self.source)
        stem = path.stem if path.suffix.lower() == ".csv" else path.name
        return re.sub(r"[^\w.-]+", "-", stem).strip("-") or "autocls"


def typical_side(paths: tuple[Path, ...], sample: int = 200) -> int:
    """Median shorter side of up to ``sample`` images, read from their headers only (no decoding)."""
    step = max(1, len(paths) // sample)
    sides = []
    for path in paths[::step][:sample]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except IMAGE_ERRORS:
            continue  # named when the images are decoded
    return int(np.median(sides)) if sides else 224


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def discover(
    source: str | Path,
    labels_csv: str | Path | None = None,
    *,
    file_column: str | None = None,
    label_column: str | None = None,
    label_delimiter: str | None = None,
    min_classes: int = 2,
) -> LabelledImages:
    """Find the labelled images of ``source`` (a class-folder tree or a CSV file).

    ``labels_csv`` names a CSV of file,label rows for the images under the folder ``source``.
    Training needs ``min_classes=2``; scoring a model may use images of one class.
    A CSV is multi-label when a label cell holds ``label_delimiter`` (``;`` by default; giving a
    delimiter makes the CSV multi-label even where no cell holds it), or when it has no label
    column but one 0/1 column per label.
    """
    if label_delimiter is not None and (not label_delimiter or label_delimiter.isalnum()):
        raise SettingError("label_delimiter", "a non-empty separator such as ';' or '|'", label_delimiter)
    source = Path(source).expanduser()
    if not source.exists():
        raise AutoclsError(f"{source}: no such file or folder; give a folder of class sub-folders or a CSV.")
    if labels_csv is not None:
        return _from_csv(
            Path(labels_csv).expanduser(),
            source,
            file_column=file_column,
            label_column=label_column,
            min_classes=min_classes,
            label_delimiter=label_delimiter,
        )
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise AutoclsError(f"{source}: expected a folder of class sub-folders or a .csv of file,label rows.")
        return _from_csv(
            source,
            source.parent,
            file_column=file_column,
            label_column=label_column,
            min_classes=min_classes,
            label_delimiter=label_delimiter,
        )
    return _from_folders(source, min_classes)


def _from_folders(root: Path, min_classes: int = 2) -> LabelledImages:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        csvs = sorted(root.glob("*.csv"))
        hint = f" or pass --labels {csvs[0]}" if csvs else ""
        raise AutoclsError(f"{root}: no class sub-folders found; put each class's images in its own folder{hint}.")
    paths: list[Path] = []
    names: list[str] = []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*") if is_image_file(p))
        if not files:
            logger.warning("class folder %s has no images; it is ignored", class_dir)
            continue
        paths.extend(files)
        names.extend([class_dir.name] * len(files))
    return _labelled(paths, names, str(root), min_classes)


def _pick_column(columns: list[str], given: str | None, candidates: tuple[str, ...], *, what: str, csv: Path) -> str:
    if given is not None:
        if given not in columns:
            raise AutoclsError(f"{csv}: no column {given!r} for the {what}; the columns are {columns}.")
        return given
    lowered = {c.strip().lower(): c for c in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    raise AutoclsError(
        f"{csv}: cannot tell which column holds the {what} among {columns}; "
        f"name it with --{'file' if what == 'image files' else 'label'}-column."
    )


def _from_csv(
    csv: Path,
    data_dir: Path,
    *,
    file_column: str | None,
    label_column: str | None,
    min_classes: int = 2,
    label_delimiter: str | None = None,
) -> LabelledImages:
    table = _read_labels_table(csv)
    columns = list(table.columns)
    if len(columns) == 2 and file_column is None and label_column is None:
        file_column, label_column = columns  # the common two-column file,label layout, whatever the header says
    file_col = _pick_column(columns, file_column, FILE_COLUMN_NAMES, what="image files", csv=csv)
    label_col, cells, multilabel = _label_cells(
        table, file_col, label_column=label_column, label_delimiter=label_delimiter, csv=csv
    )
    bases = [data_dir] if data_dir == csv.parent else [data_dir, csv.parent]
    if any(is_image_file(base / file_col) for base in bases):
        raise AutoclsError(
            f"{csv}: the first row ({file_col!r}, {label_col!r}) names an image, so the CSV seems to have no "
            "header row and that image would be lost; add a first line such as: file,label"
        )
    paths: list[Path] = []
    names: list[list[str]] = []
    missing: list[str] = []
    empty: list[int] = []
    escaping: list[str] = []
    first_row: dict[Path, tuple[int, str, int]] = {}  # each image, by its resolved path: row, name, position
    conflicts: list[str] = []
    repeats = 0
    for row, (file_name, labels) in enumerate(zip(table[file_col], cells), start=2):
        if not labels and not multilabel:
            empty.append(row)
            continue
        # absolute paths are taken as given; relative ones must stay inside the folder they are relative to
        if not Path(file_name).is_absolute() and not any(_inside(base, base / file_name) for base in bases):
            escaping.append(file_name)
            continue
        found = next((base / file_name for base in bases if (base / file_name).is_file()), None)
        if found is None:
            missing.append(file_name)
            continue
        key = found.resolve()  # imgs/x.png, ./imgs/x.png and an absolute path are one image
        if key in first_row:
            earlier_row, earlier_name, position = first_row[key]
            if multilabel:  # one row per (image, label) pair is a common multi-label layout: the labels add up
                names[position] = list(dict.fromkeys(names[position] + labels))
                repeats += 1
            elif names[position] == labels:
                repeats += 1
            else:
                conflicts.append(
                    f"{earlier_name} is {names[position][0]!r} in row {earlier_row} but {file_name} is "
                    f"{labels[0]!r} in row {row}"
                )
            continue
        first_row[key] = (row, file_name, len(paths))
        paths.append(found)
        names.append(labels)
    _refuse_bad_rows(csv, bases, empty=empty, conflicts=conflicts, escaping=escaping, missing=missing)
    # multi-label images with none of the labels (after all their rows): negatives for every label
    unlabelled = sorted(row for row, _, position in first_row.values() if not names[position])
    if unlabelled:
        logger.warning(
            "%s: %d rows have none of the labels (rows %s); those images count as negatives for every label",
            csv,
            len(unlabelled),
            _first(unlabelled),
        )
    if repeats:
        logger.warning(
            "%s: %d rows repeat an image already listed; each image counted once%s",
            csv,
            repeats,
            " with the labels of all its rows" if multilabel else "",
        )
    if multilabel:
        return _labelled_sets(paths, names, str(csv), min_classes)
    return _labelled(paths, [n[0] for n in names], str(csv), min_classes)


def _label_cells(
    table: pd.DataFrame, file_col: str, *, label_column: str | None, label_delimiter: str | None, csv: Path
) -> tuple[str, list[list[str]], bool]:
    """(the label column's name, each row's labels, whether the data is multi-label) for a CSV of
    one label column (one label, or several separated by the delimiter) or one 0/1 column per label."""
    indicators = None if label_column is not None else _indicator_columns(table, file_col, csv)
    if indicators is not None:
        cells = [[name for name in indicators if row[name].strip() == "1"] for _, row in table.iterrows()]
        unused = [name for name in indicators if not any(name in c for c in cells)]
        if unused:
            logger.warning("%s: no image has the label columns %s (all 0); they are left out", csv, unused)
        return indicators[0], cells, any(len(c) != 1 for c in cells)  # one 1 a row: one-hot single-label columns
    label_col = _pick_column(list(table.columns), label_column, LABEL_COLUMN_NAMES, what="labels", csv=csv)
    multilabel = label_delimiter is not None or any(DELIMITER in c for c in table[label_col])
    delimiter = label_delimiter or DELIMITER
    _check_delimiter(csv, list(table[label_col]), delimiter, multilabel=multilabel, given=label_delimiter is not None)
    if multilabel:
        return label_col, [split_labels(c, delimiter) for c in table[label_col]], True
    return label_col, [[c.strip()] if c.strip() else [] for c in table[label_col]], False


def _indicator_columns(table: pd.DataFrame, file_col: str, csv: Path) -> list[str] | None:
    """The label columns of a CSV with one 0/1 column per label (and no column named like a label
    column); ``None`` for any other layout. A few cells other than 0/1 are named as an error."""
    lowered = {c.strip().lower() for c in table.columns}
    others = [c for c in table.columns if c != file_col]
    if len(others) < 2 or any(name in lowered for name in LABEL_COLUMN_NAMES) or table.empty:
        return None
    cells = table[others].apply(lambda column: column.str.strip())
    binary = cells.isin(["0", "1"])
    if binary.to_numpy().mean() < 0.9:
        return None  # not a 0/1 table: the label column is asked for by name
    if not binary.to_numpy().all():
        rows, cols = np.nonzero(~binary.to_numpy())
        bad = [f"row {r + 2} column {others[c]!r} is {cells.iat[r, c]!r}" for r, c in zip(rows, cols)]
        raise AutoclsError(
            f"{csv}: one 0/1 column per label expected, but {len(bad)} cells are neither 0 nor 1 ({_first(bad, 2)}); "
            "write 1 where the image has the label and 0 where it has not."
        )
    return others


def _check_delimiter(csv: Path, cells: list[str], delimiter: str, *, multilabel: bool, given: bool) -> None:
    """Labels that look separated by another character than the delimiter: an error when the
    delimiter was given (it would split nothing), else a warning (a class name may hold a comma)."""
    if multilabel and any(delimiter in c for c in cells):
        return
    for other in (DELIMITER, ",", "|"):  # ';' can only be "another" character when a delimiter was given
        rows = [i + 2 for i, c in enumerate(cells) if other in c]
        if not rows or other == delimiter:
            continue
        if given:
            raise AutoclsError(
                f"{csv}: no label cell holds the label delimiter {delimiter!r}, but {len(rows)} hold {other!r} "
                f"(rows {_first(rows)}); pass --label-delimiter '{other}'."
            )
        logger.warning(
            "%s: %d label cells hold %r (rows %s); each is taken as one class name. If they list several labels, "
            "pass --label-delimiter '%s'",
            csv,
            len(rows),
            other,
            _first(rows),
            other,
        )


def _read_labels_table(csv: Path) -> pd.DataFrame:
    """The CSV as strings, with ',' or the ';', tab or '|' a spreadsheet's export may use; two columns at least."""
    if not csv.is_file():
        raise AutoclsError(f"{csv}: labels CSV not found.")
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
        if len(table.columns) == 1:  # a spreadsheet's export in some locales: ';' (or tab) between columns
            separator = next((s for s in (";", "\t", "|") if s in str(table.columns[0])), None)
            if separator is not None:
                table = pd.read_csv(csv, dtype=str, keep_default_na=False, sep=separator)
    except pd.errors.EmptyDataError:
        raise AutoclsError(
            f"{csv}: the file is empty; a labels CSV needs a header row (file,label) and one row per image."
        ) from None
    except UnicodeDecodeError as err:
        raise AutoclsError(
            f"{csv}: not UTF-8 text (byte {err.object[err.start]:#04x} at position {err.start}); "
            "save it as UTF-8 (a spreadsheet's 'CSV UTF-8' export)."
        ) from None
    except pd.errors.ParserError as err:
        raise AutoclsError(
            f"{csv}: not a readable CSV ({str(err).strip()}); give every row as many columns as the header."
        ) from None
    if table.empty:
        raise AutoclsError(f"{csv}: a header row and no images below it; add one row per image (file,label).")
    if len(table.columns) < 2:
        raise AutoclsError(
            f"{csv}: found one column ({table.columns[0]!r}); a labels CSV needs a file column and a label column, "
            "separated by commas (or ';' or tabs)."
        )
    return table


def _refuse_bad_rows(
    csv: Path,
    bases: list[Path],
    *,
    empty: list[int],
    conflicts: list[str],
    escaping: list[str],
    missing: list[str],
) -> None:
    """One error for the first kind of bad row found, naming the rows or files and the fix."""
    if empty:
        raise AutoclsError(f"{csv}: {len(empty)} rows have an empty label (rows {_first(empty)}); fill or remove them.")
    if conflicts:
        raise AutoclsError(
            f"{csv}: {len(conflicts)} images are listed with two different labels ({_first(conflicts, 2)}); "
            f"keep one row each with the right label (for images with several labels, list them in one cell "
            f"separated by '{DELIMITER}')."
        )
    if escaping:
        raise AutoclsError(
            f"{csv}: {len(escaping)} paths point outside the data folder ({_first(escaping)}); "
            "give paths inside the data folder (or the CSV's), or absolute paths."
        )
    if missing:
        where = " or ".join(str(b) for b in bases)
        raise AutoclsError(
            f"{csv}: {len(missing)} listed files do not exist under {where} ({_first(missing)}); fix the paths."
        )


def _inside(base: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(base.resolve())


def _first(items: list, n: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... {len(items) - n} more" if len(items) > n else "")


def _labelled(paths: list[Path], names: list[str], origin: str, min_classes: int = 2) -> LabelledImages:
    class_names = tuple(sorted(set(names)))
    if not class_names:
        raise AutoclsError(f"{origin}: no labelled images found; put each class's images in its own folder.")
    if len(class_names) < min_classes:
        raise AutoclsError(
            f"{origin}: a classifier needs at least 2 classes with images; found only {class_names[0]!r}."
        )
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[n] for n in names], dtype=np.int64)
    return LabelledImages(tuple(paths), labels, class_names)


def labels_in_order(data: LabelledImages, class_names: list[str] | tuple[str, ...], multilabel: bool) -> np.ndarray:
    """``data``'s labels over a model's ``class_names`` (a superset of ``data``'s, matched by name):
    class indices, or for a multi-label model an images x labels 0/1 matrix (single-label data then
    has one label per image)."""
    columns = np.array([list(class_names).index(name) for name in data.class_names], dtype=np.int64)
    if not multilabel:
        return columns[data.labels]
    matrix = np.zeros((len(data), len(class_names)), dtype=np.uint8)
    if data.multilabel:
        matrix[:, columns] = data.labels
    else:
        matrix[np.arange(len(data)), columns[data.labels]] = 1
    return matrix


def _labelled_sets(paths: list[Path], sets: list[list[str]], origin: str, min_classes: int = 2) -> LabelledImages:
    """Multi-label images: the 0/1 matrix of each image's labels over the sorted label names."""
    class_names = tuple(sorted({name for names in sets for name in names}))
    if not class_names:
        raise AutoclsError(f"{origin}: no image has a label; give each image its labels (or 1 in its label columns).")
    if len(class_names) < min_classes:
        raise AutoclsError(f"{origin}: multi-label data needs at least 2 labels; found only {class_names[0]!r}.")
    index = {name: j for j, name in enumerate(class_names)}
    labels = np.zeros((len(paths), len(class_names)), dtype=np.uint8)
    for i, names in enumerate(sets):
        labels[i, [index[n] for n in names]] = 1
    return LabelledImages(tuple(paths), labels, class_names)


def check_folds(data: LabelledImages, folds: int) -> None:
    """Stratified k-fold needs every class in every fold; sklearn only warns, so fail clearly here."""
    if folds < 2:
        raise SettingError("folds", "an integer >= 2", folds)  # as RUN_CONSTRAINTS (autocls.train, above data)
    small = {name: n for name, n in data.class_counts().items() if n < folds}
    if small:
        listed = ", ".join(f"{name!r} has {n}" for name, n in list(small.items())[:5])
        fewest = min(small.values())
        fix = (
            f"set folds to {fewest} or add images to those classes"
            if fewest >= 2
            else "cross-validation needs at least 2 images of each class: add images or remove those classes"
        )
        what = "labels" if data.multilabel else "classes"
        raise AutoclsError(f"{len(small)} {what} have fewer images than the {folds} folds ({listed}); {fix}.")
