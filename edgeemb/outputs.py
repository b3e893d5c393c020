"""How edgeemb writes: every output appears whole or not at all, and `--force` replaces only
what edgeemb wrote.

An output (an OUT/ folder, an exported model, a flash store, a plot, a report) is produced under a
temporary name beside its target, checked there, and renamed into place by `staged`: a run that
fails, or is interrupted, leaves the previous output exactly as it was. Temporaries are named
`.STEM.edgeemb-tmp-PID…`; a later run removes those whose process is gone.

An existing target is replaced only with `force`, and only if edgeemb wrote it (`owned`): a folder
whose manifest says edgeemb wrote it, or a file carrying edgeemb's mark. Each kind of file carries
the mark its own way, registered beside its writer (`register_mark`): a GGUF metadata key, ONNX
metadata, a PNG text chunk, a comment in Markdown and HTML, a trailer on a flash store.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from edgeemb import __version__
from edgeemb.errors import EdgeembError

MARK = f"edgeemb {__version__}"
# Files in a folder that say edgeemb wrote it: a JSON object with this key.
FOLDER_MANIFESTS = ("manifest.json", "edgeemb.json")
VERSION_KEY = "edgeemb_version"
_TMP_TAG = ".edgeemb-tmp-"
_MARKS: dict[str, Callable[[Path], bool]] = {}


def register_mark(*suffixes: str) -> Callable[[Callable[[Path], bool]], Callable[[Path], bool]]:
    """Register how a file with one of `suffixes` shows that edgeemb wrote it ("*": any other)."""

    def wrap(recognise: Callable[[Path], bool]) -> Callable[[Path], bool]:
        for suffix in suffixes:
            _MARKS[suffix] = recognise
        return recognise

    return wrap


TEXT_MARK = f"<!-- written by {MARK} -->"  # near the top of a Markdown or HTML file edgeemb writes


@register_mark(".md", ".html")
def _marked_text(path: Path) -> bool:
    with open(path, "rb") as handle:
        return b"<!-- written by edgeemb " in handle.read(512)


@register_mark(".png")
def _marked_png(path: Path) -> bool:
    with open(path, "rb") as handle:  # matplotlib writes its text chunks before the image data
        return b"Software\x00edgeemb " in handle.read(4096)


def png_metadata() -> dict[str, str]:
    """`savefig(metadata=...)` for a PNG edgeemb writes."""
    return {"Software": MARK}


def owned(path: Path) -> bool:
    """Whether edgeemb wrote `path` (a folder with its manifest, or a file with its mark)."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            return any(_folder_manifest(path / name) for name in FOLDER_MANIFESTS)
        recognise = _MARKS.get(_suffix(path)) or _MARKS.get("*")  # "*": files of any other name
        return path.is_file() and recognise is not None and recognise(path)
    except Exception:  # noqa: BLE001  a file that its kind's reader rejects is not one edgeemb wrote
        return False


def _folder_manifest(path: Path) -> bool:
    if not path.is_file():
        return False
    data = json.loads(path.read_text())
    return isinstance(data, dict) and VERSION_KEY in data


def _suffix(path: Path) -> str:
    return ".tar.gz" if path.name.endswith(".tar.gz") else path.suffix


def check_target(path: Path, force: bool) -> None:
    """Before any work: an existing `path` needs `force`, and must be edgeemb's own."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not force:
        raise EdgeembError(f"{path} already exists; pass --force to replace it")
    here = Path.cwd().resolve()
    if path.resolve() in (here, *here.parents):
        raise EdgeembError(
            f"{path} is the working folder or holds it: edgeemb will not replace it; choose an output below it"
        )
    if not owned(path):
        what = "folder" if path.is_dir() else "file"
        raise EdgeembError(
            f"{path}: edgeemb did not write this {what}, so --force will not replace it; "
            "move it away or choose another output"
        )


@contextlib.contextmanager
def staged(path: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write the output to (a file, or a folder the
    writer creates); when the block ends without an error, rename it into place, replacing an
    existing output of edgeemb's (with `force`). On any error, or a signal, nothing is renamed
    and the temporary is removed.

    Files named after the temporary's stem (`.model.edgeemb-tmp-PID.tokenizer.json` beside
    `.model.edgeemb-tmp-PID.onnx`) are companions: they move with it, to `model.tokenizer.json`."""
    path = Path(path)
    check_target(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    prefix = f".{_stem(path)}{_TMP_TAG}{os.getpid()}"
    temporary = path.with_name(prefix + _suffix(path))
    try:
        yield temporary
        if not temporary.exists():
            raise EdgeembError(f"{path}: the writer produced nothing")
        check_target(path, force)  # again: something may have appeared at `path` meanwhile
        for companion in _companions(temporary, prefix):
            os.replace(companion, path.parent / (_stem(path) + companion.name[len(prefix) :]))
        _swap(temporary, path)
    except BaseException:
        for leftover in [temporary, *_companions(temporary, prefix)]:
            _remove(leftover)
        raise


def _stem(path: Path) -> str:
    return path.name[: -len(_suffix(path))] if _suffix(path) else path.name


def _companions(temporary: Path, prefix: str) -> list[Path]:
    folder = temporary.parent
    return [entry for entry in folder.iterdir() if entry.name.startswith(prefix + ".") and entry != temporary]


def _swap(temporary: Path, path: Path) -> None:
    """Put `temporary` at `path`; an existing folder is moved aside first and removed after."""
    if not path.is_dir() or path.is_symlink():
        os.replace(temporary, path)
        return
    retired = path.with_name(f".{path.name}{_TMP_TAG}{os.getpid()}-old")
    os.rename(path, retired)
    try:
        os.rename(temporary, path)
    except BaseException:
        os.rename(retired, path)
        raise
    _remove(retired)


def remove_stale(path: Path) -> None:
    """Remove temporaries of `path` left by edgeemb runs that are no longer alive."""
    pattern = f".{_stem(Path(path))}{_TMP_TAG}"
    folder = Path(path).parent
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(pattern) and not _alive(entry.name[len(pattern) :]):
            _remove(entry)


def _alive(tail: str) -> bool:
    digits = ""
    for char in tail:
        if not char.isdigit():
            break
        digits += char
    if not digits:
        return False
    if int(digits) == os.getpid():
        return True
    try:
        os.kill(int(digits), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def write_text(path: Path, text: str, force: bool = False) -> None:
    """Write a text file whole or not at all."""
    with staged(path, force) as temporary:
        temporary.write_text(text)
