"""Where a study's artifacts live: a folder or S3-compatible object storage, opened as Optuna artifact stores.

A study's artifacts are the dashboard's figures (:mod:`autocls.study.publish`, uploaded with Optuna's
``upload_artifact`` under its random ids) and the kept trials' fold models and out-of-fold
predictions (:mod:`autocls.storage.trials`, under ``autocls/<study>.<id>/trials/<number>/``). Every
machine of a distributed search must see the same store, so the store is chosen once per command:

1. ``--artifacts URL``, else ``$AUTOCLS_ARTIFACTS``: a folder (a path, or ``file://PATH``) or
   ``s3://BUCKET/PREFIX``;
2. else the store recorded on the study (study user attribute ``artifacts``) by the first search
   that was given one, so later commands on any machine find it without the flag;
3. else the workdir's ``artifacts/`` folder, which is each machine's own (not recorded).

A URL other than the recorded one is taken only where it is the same store seen from here (a shared
folder mounted at another path): the search that records a store writes the study's marker object
``autocls/<study>.<id>/study.json`` into it, and a command given another URL looks for that marker.
Without it the command stops with one line, rather than splitting the study over two stores.

S3 credentials and the endpoint come from boto3's usual sources (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for a server other than AWS, ``~/.aws``); a URL
with credentials in it is refused, so what is recorded and printed never holds a secret.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlsplit

import optuna
from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from autocls.runtime.atomic import write_atomically
from autocls.runtime.environment import ARTIFACTS_ENV
from autocls.runtime.errors import AutoclsError
from autocls.storage.workdir import Workdir

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

ARTIFACTS_ATTR = "artifacts"  # the study user attribute: an ArtifactsRecord
MARKER = "study.json"
S3_TIMEOUTS = {"connect_timeout": 10, "read_timeout": 120}  # an unreachable endpoint fails in seconds, not minutes


@dataclass(frozen=True)
class Location:
    """Where a store is: a folder, or a bucket and a key prefix. ``url`` is what is shown and recorded."""

    url: str
    folder: Path | None = None
    bucket: str | None = None
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> Location:
        """The location ``url`` names; a bad URL is one line that says what to write instead."""
        text = url.strip()
        if not text:
            raise AutoclsError("--artifacts is empty: give a folder or s3://BUCKET/PREFIX.")
        if "://" not in text:
            folder = Path(text).expanduser().resolve()
            return cls(str(folder), folder=folder)
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if "@" in parts.netloc:  # never echo it: what precedes the @ may be a secret
            raise AutoclsError(
                "--artifacts must not hold credentials: give s3://BUCKET/PREFIX and set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY in the environment."
            )
        if scheme == "file":
            folder = Path(parts.netloc + parts.path).expanduser().resolve()
            return cls(str(folder), folder=folder)
        if scheme != "s3":
            raise AutoclsError(
                f"--artifacts {scheme}:// is not supported: give a folder (shared by the machines) or "
                "s3://BUCKET/PREFIX (any S3-compatible server: set AWS_ENDPOINT_URL)."
            )
        bucket, prefix = parts.netloc, parts.path.strip("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise AutoclsError(
                f"--artifacts s3://{bucket}/...: {bucket!r} is not a bucket name (3 to 63 lower-case letters, "
                "digits, dots and hyphens); write s3://BUCKET/PREFIX."
            )
        return cls(f"s3://{bucket}/{prefix}".rstrip("/"), bucket=bucket, prefix=prefix)

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None


class AtomicFileSystemArtifactStore(FileSystemArtifactStore):
    """Optuna's folder store, writing each artifact aside and renaming it into place.

    Optuna's ``write`` opens the target and copies into it: a reader on a shared folder (another
    machine's refit) could load part of a fold model. It also expects the key's folder to exist,
    and a trial's objects live in sub-folders.
    """

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        path = self._get_filepath(artifact_id)  # Optuna's check that the key stays inside the folder
        write_atomically(path, lambda f: f.write(content_body.read()))


class PrefixedArtifactStore:
    """An artifact store whose keys sit under a prefix of another store's.

    Implemented here because Optuna's ``Boto3ArtifactStore`` writes at the bucket's root, and
    ``s3://BUCKET/PREFIX`` lets several projects (or studies) share one bucket.
    """

    def __init__(self, store: ArtifactStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.strip("/")

    def _key(self, artifact_id: str) -> str:
        return f"{self.prefix}/{artifact_id}" if self.prefix else artifact_id

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.store.open_reader(self._key(artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.store.write(self._key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self._key(artifact_id))


class FirstFoundArtifactStore:
    """Several stores read as one: the first that holds an artifact serves it; writes go to the first.

    Implemented here because optuna-dashboard serves one store, and the studies of one storage may
    each record their own (and a study's older figures may be in the workdir's folder).
    """

    def __init__(self, stores: Sequence[ArtifactStore]) -> None:
        self.stores = list(stores)

    def open_reader(self, artifact_id: str) -> BinaryIO:
        for store in self.stores:
            try:
                return store.open_reader(artifact_id)
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of the stores")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.stores[0].write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        for store in self.stores:
            try:
                store.remove(artifact_id)
            except ArtifactNotFound:
                continue


def read_bytes(store: ArtifactStore, key: str) -> bytes:
    """The whole artifact at ``key``; raises Optuna's ``ArtifactNotFound`` where there is none."""
    reader = store.open_reader(key)
    try:
        return reader.read()
    finally:
        reader.close()


def write_bytes(store: ArtifactStore, key: str, content: bytes) -> None:
    store.write(key, io.BytesIO(content))


def open_store(location: Location, *, create: bool = False) -> ArtifactStore:
    """An Optuna artifact store at ``location``; a folder is created only with ``create``.

    S3 is checked here (the bucket answers) so that a wrong endpoint, bucket or credentials is one
    line now, not a failed upload after the first trial.
    """
    if location.folder is not None:
        folder = location.folder
        if folder.exists() and not folder.is_dir():
            raise AutoclsError(f"--artifacts {folder} is a file; give a folder.")
        if not folder.is_dir():
            if not create:
                raise AutoclsError(
                    f"the artifact store {folder} is not on this machine: mount the shared folder there, "
                    "or give --artifacts PATH where it is mounted here."
                )
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise AutoclsError(f"cannot create the artifact store {folder} ({err.strerror}).") from None
        return AtomicFileSystemArtifactStore(folder)
    return PrefixedArtifactStore(Boto3ArtifactStore(location.bucket, _s3_client(location)), location.prefix)


def _s3_client(location: Location):  # -> S3Client (boto3's types are not installed)
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError:
        raise AutoclsError(
            f"--artifacts {location.url} needs boto3: pip install 'autocls[s3]' (or pip install boto3)."
        ) from None
    session = boto3.session.Session()  # not boto3's default one: it keeps the credentials it first found
    client = session.client("s3", config=Config(**S3_TIMEOUTS, retries={"max_attempts": 5, "mode": "standard"}))
    # the check tries twice, not five times with backoff: a wrong endpoint is one line within seconds
    probe = session.client("s3", config=Config(**S3_TIMEOUTS, retries={"max_attempts": 2, "mode": "standard"}))
    endpoint = urlsplit(client.meta.endpoint_url).netloc.rpartition("@")[2]  # never a user:password@
    try:
        probe.head_bucket(Bucket=location.bucket)
    except NoCredentialsError:
        raise AutoclsError(
            f"no S3 credentials for {location.url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(and AWS_ENDPOINT_URL for a server other than AWS)."
        ) from None
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", "")) or "error"
        if code in ("404", "NoSuchBucket"):
            what = f"bucket {location.bucket!r} does not exist at {endpoint}: create it, or check AWS_ENDPOINT_URL"
        elif code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            what = f"{endpoint} refused access to bucket {location.bucket!r}: check AWS_ACCESS_KEY_ID and its rights"
        else:
            what = f"{endpoint} answered {code} for bucket {location.bucket!r}"
        raise AutoclsError(f"cannot use the artifact store {location.url}: {what}.") from None
    except BotoCoreError:  # no connection, a bad endpoint URL, a timeout
        raise AutoclsError(
            f"cannot reach the S3 endpoint {endpoint} for {location.url}: check AWS_ENDPOINT_URL and the network."
        ) from None
    return client


@dataclass(frozen=True)
class ArtifactsRecord:
    """What a study records about its artifacts (the study user attribute ``artifacts``)."""

    url: str | None  # None: each machine's WORKDIR/artifacts
    key: str  # the study's folder in the store: autocls/<study>.<id>

    @classmethod
    def read(cls, study: optuna.Study) -> ArtifactsRecord | None:
        stored = study.user_attrs.get(ARTIFACTS_ATTR)
        return cls(**stored) if isinstance(stored, dict) else None


def study_key(study: optuna.Study) -> str:
    """The study's folder in a store: its name made safe for a key, and its id in the storage, so
    that a study deleted and created again under the same name does not find the old one's models."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", study.study_name).strip(".") or "study"
    return f"autocls/{name}.{study._study_id}"


@dataclass(frozen=True)
class StudyArtifacts:
    """A study's artifact store as this command uses it."""

    location: Location
    store: ArtifactStore
    key: str  # the study's folder in the store
    default: bool  # the workdir's own folder: no other machine sees it

    @property
    def url(self) -> str:
        return self.location.url


def default_location(workdir: Workdir) -> Location:
    return Location.parse(str(workdir.artifacts))


def study_artifacts(study: optuna.Study, url: str | None, workdir: Workdir, *, record: bool = False) -> StudyArtifacts:
    """The store of ``study`` for this command: ``url`` (the flag or the environment), else the one
    recorded on the study, else the workdir's folder. With ``record`` (a search), a ``url`` the study
    has not recorded yet becomes its store: its marker is written, then the study records it. A
    ``url`` other than the recorded store must hold the study's marker (the same store, mounted
    elsewhere); a study that recorded none takes the ``url`` it is given."""
    stored = ArtifactsRecord.read(study)
    key = stored.key if stored else study_key(study)
    recorded = stored.url if stored else None
    if url is None and recorded is None:
        location = default_location(workdir)  # created by a search; read-only commands find it empty if missing
        store = open_store(location, create=True) if record else AtomicFileSystemArtifactStore(location.folder)
        artifacts = StudyArtifacts(location, store, key, default=True)
    else:
        location = Location.parse(url if url is not None else recorded)
        first = record and recorded is None
        store = open_store(location, create=first)
        if recorded and location.url != recorded and not _holds_marker(store, key):
            raise AutoclsError(
                f"study {study.study_name!r} keeps its fold models and figures in {recorded} (recorded on the "
                f"study), and {location.url} is not that store: it holds no {key}/{MARKER}. Drop --artifacts (and "
                f"${ARTIFACTS_ENV}) to use the recorded store, or give the path where it is mounted on this machine."
            )
        if first:
            write_bytes(store, f"{key}/{MARKER}", json.dumps({"study": study.study_name, "key": key}).encode())
        artifacts = StudyArtifacts(location, store, key, default=False)
    if record and stored != (new := ArtifactsRecord(recorded or (None if artifacts.default else location.url), key)):
        study.set_user_attr(ARTIFACTS_ATTR, asdict(new))
    return artifacts


def _holds_marker(store: ArtifactStore, key: str) -> bool:
    try:
        read_bytes(store, f"{key}/{MARKER}")
    except ArtifactNotFound:
        return False
    return True


def dashboard_store(
    storage: optuna.storages.BaseStorage, url: str | None, workdir: Workdir
) -> tuple[ArtifactStore, list[str]]:
    """What ``autocls dashboard`` serves, and the URLs it reads: ``url``, else the stores the storage's
    studies recorded, with the workdir's folder where a study recorded none (or there is no study)."""
    if url is not None:
        location = Location.parse(url)
        return open_store(location), [location.url]
    default = default_location(workdir)
    locations: list[Location] = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        stored = summary.user_attrs.get(ARTIFACTS_ATTR)
        recorded = stored.get("url") if isinstance(stored, dict) else None
        location = Location.parse(recorded) if recorded else default
        if location not in locations:
            locations.append(location)
    locations = locations or [default]
    stores = [open_store(location, create=location == default) for location in locations]
    urls = [location.url for location in locations]
    return (stores[0] if len(stores) == 1 else FirstFoundArtifactStore(stores)), urls
