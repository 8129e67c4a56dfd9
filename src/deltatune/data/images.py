"""Reading image files for image tasks, and the two training augmentations.

Images are opened with Pillow and converted to RGB (palette, grey, RGBA and CMYK images
included); a file that is missing, empty, not an image, damaged, or in a mode that has no RGB
form (e.g. 32-bit float) is reported by :func:`image_problem` in words, so that a task can refuse
the row naming the file or skip it (``data.skip_bad_rows``).

Augmentations (training only, before the model's own resize / crop / normalize):
:func:`random_resized_crop` samples an area and aspect ratio as torchvision's ``RandomResizedCrop``
(Szegedy et al. 2015, "Going deeper with convolutions", §6: 8-100% of the area, aspect ratio
3/4-4/3, log-uniform), :func:`horizontal_flip` mirrors with probability 0.5.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from deltatune.errors import DeltatuneError

# modes Pillow converts to RGB without losing what they mean
RGB_MODES = ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV")


def image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an RGB image, in words (``"is empty (0 bytes)"``), or ``None``.

    Checks the file's structure (``Image.verify``) and decodes the pixels (``Image.load`` in a fresh
    ``Image.open``: ``verify`` alone lets a truncated JPEG through).
    """
    if not path.is_file():
        return "does not exist" if not path.exists() else "is not a file"
    if path.stat().st_size == 0:
        return "is empty (0 bytes)"
    try:
        with Image.open(path) as img:
            mode = img.mode
            img.verify()
        with Image.open(path) as img:  # verify() leaves the image unusable; decode the pixels in a fresh one
            img.load()
    except UnidentifiedImageError:
        return "is not an image Pillow can read"
    except Exception as e:  # truncated or damaged data, unreadable file
        return f"is a damaged image ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
    if mode not in RGB_MODES:
        return f"has image mode {mode}, which has no RGB form (use 8-bit RGB, grey or palette images)"
    return None


def load_image(path: Path, where: str) -> Image.Image:
    """The image at ``path``, decoded, as RGB.

    Args:
        where: names the row in messages (``"train.csv: row 3, column 'image'"``).

    Raises:
        DeltatuneError: the file cannot be read as an RGB image (naming ``where`` and the file).
    """
    problem = image_problem(path)
    if problem is None:
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except Exception as e:  # damaged pixel data that verify() let through
            problem = f"is a damaged image ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
    raise DeltatuneError(f"{where}: {path} {problem}; fix or remove the file, or set data.skip_bad_rows: true")


def random_resized_crop(
    img: Image.Image, rng: random.Random, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
) -> Image.Image:
    """A random crop of ``scale`` of the area and aspect ratio in ``ratio`` (log-uniform), as
    torchvision's ``RandomResizedCrop.get_params``: 10 tries, then the centre crop of the closest
    allowed ratio. The model's processor resizes it afterwards."""
    width, height = img.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return img.crop((left, top, left + w, top + h))
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return img.crop((left, top, left + w, top + h))


def horizontal_flip(img: Image.Image, rng: random.Random) -> Image.Image:
    """``img`` mirrored left-right with probability 0.5."""
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img
