"""Class-folder datasets: ``<root>/<class>/<file>`` images or audio files as rows.

The layout of torchvision's ``ImageFolder`` and of ``datasets``' ``imagefolder``/``audiofolder``
builders: each visible sub-folder of the root is a class (its name the label), each image or audio
file in it one example. Rows get the file's absolute path in a column named after the media kind
(``image`` or ``audio``, as ``datasets`` names it) and the class in ``label``.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from deltatune.data.paths import IMAGE_SUFFIXES, AUDIO_SUFFIXES, media_kind
from deltatune.errors import DeltatuneError


def read_class_folders(root: Path) -> datasets.Dataset:
    """One row per media file under ``root/<class>/``, classes and files in name order.

    Files whose suffix is neither an image's (:data:`~deltatune.data.paths.IMAGE_SUFFIXES`) nor an
    audio file's (:data:`~deltatune.data.paths.AUDIO_SUFFIXES`) and hidden files are left out; files
    directly in ``root`` are not examples (a README).

    Returns:
        A ``datasets.Dataset`` with columns ``image`` (or ``audio``): the absolute file path (str),
        and ``label``: the class folder's name (str).

    Raises:
        DeltatuneError: no class folder holds a media file; images and audio files mixed (naming one of each).
    """
    files: dict[str, list[tuple[str, str]]] = {"image": [], "audio": []}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(sub.iterdir()):
            kind = media_kind(f) if f.is_file() and not f.name.startswith(".") else None
            if kind is not None:
                files[kind].append((str(f.resolve()), sub.name))
    if files["image"] and files["audio"]:
        raise DeltatuneError(
            f"{root}: class folders hold both images ({files['image'][0][0]}) and audio files ({files['audio'][0][0]}); "
            "keep one kind per dataset"
        )
    kind = "image" if files["image"] else "audio"
    if not files[kind]:
        raise DeltatuneError(
            f"{root}: no <class>/<file> image ({', '.join(IMAGE_SUFFIXES)}) or audio ({', '.join(AUDIO_SUFFIXES)}) files found"
        )
    return datasets.Dataset.from_dict({kind: [p for p, _ in files[kind]], "label": [c for _, c in files[kind]]})
