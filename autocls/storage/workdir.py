"""The run folder (``--workdir``): what a search keeps on disk, and the one place that knows where.

Layout::

    WORKDIR/autocls.db                  the default study storage (SQLite), see :mod:`autocls.storage.rdb`
    WORKDIR/autocls.journal             the journal file suggested for ``--workers`` on one machine
    WORKDIR/cache/                      decoded-image arrays (:mod:`autocls.data.imagecache`)
    WORKDIR/cache/speeds.json           measured training speeds, latencies and sizes (the training-time model)
    WORKDIR/artifacts/                  the default artifact store: fold models and figures
    WORKDIR/<study>/                    one study's own files:
    WORKDIR/<study>/files.json            the index of the images it searched (a later change is described from it)
    WORKDIR/<study>/model/                the model refit saves by default
    WORKDIR/<study>/trials/               fold models as kept before artifact stores (read, never written)
    WORKDIR/<study>/labels.csv            a DataFrame given to the API, written out as (path, label) rows

Every path is derived here, so a command, the API and the search cannot disagree on one. Nothing is
created by building a :class:`Workdir`; :meth:`Workdir.storage_url` creates the folder, as opening
the default storage writes its file there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORKDIR = Path("autocls-runs")
DATABASE = "autocls.db"
JOURNAL = "autocls.journal"
CACHE_DIR = "cache"
SPEEDS_FILE = "speeds.json"
ARTIFACT_DIR = "artifacts"
DATA_INDEX_FILE = "files.json"
MODEL_DIR = "model"
LEGACY_TRIALS_DIR = "trials"
DATAFRAME_CSV = "labels.csv"
DATAFRAME_STUDY = "dataframe"  # the folder of a DataFrame's CSV when the API was given no study name


@dataclass(frozen=True)
class Workdir:
    """A run folder: ``root`` and the paths of what autocls keeps in it (see the module's layout)."""

    root: Path = DEFAULT_WORKDIR

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # a str from the API is a path too

    @property
    def database(self) -> Path:
        """The file of the default storage (SQLite) of searches run here."""
        return self.root / DATABASE

    def storage_url(self) -> str:
        """The default storage's URL (an absolute ``sqlite:///`` path); creates the folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.database.resolve()}"

    @property
    def journal(self) -> Path:
        """The journal file to suggest when several processes on this machine share a study."""
        return self.root / JOURNAL

    @property
    def cache(self) -> Path:
        """The folder of decoded-image arrays (and of :attr:`speeds`)."""
        return self.root / CACHE_DIR

    @property
    def speeds(self) -> Path:
        """The training-time model's measurements (:mod:`autocls.study.trainingtime`)."""
        return self.cache / SPEEDS_FILE

    @property
    def artifacts(self) -> Path:
        """The default artifact store: this machine's own folder."""
        return self.root / ARTIFACT_DIR

    def study(self, name: str) -> Path:
        """The folder of study ``name``'s own files."""
        return self.root / name

    def data_index(self, study: str) -> Path:
        """The index of the images study ``study`` searched on this machine."""
        return self.study(study) / DATA_INDEX_FILE

    def model(self, study: str) -> Path:
        """Where refit saves study ``study``'s model when given no ``--out``."""
        return self.study(study) / MODEL_DIR

    def legacy_trials(self, study: str) -> Path:
        """Where study ``study`` kept its fold models before artifact stores."""
        return self.study(study) / LEGACY_TRIALS_DIR

    def dataframe_csv(self, study: str | None) -> Path:
        """Where the API writes a DataFrame given as data, so refit finds the images again."""
        return self.study(study or DATAFRAME_STUDY) / DATAFRAME_CSV
