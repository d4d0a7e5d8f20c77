"""Reading images of any kind and fitting them to a model's working size.

Policy: the image is converted to RGB (transparency composited on white, 16-bit, 32-bit float and
grayscale scaled to 8-bit RGB, the first frame of an animation), then, unless it already has the model's
native size, resized with Lanczos so that its long side equals the model's resolution and each side
is rounded to a multiple the UNet can divide down (64 px for Stable Diffusion). Aspect ratio is
kept to within that rounding; nothing is cropped.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from autotune.errors import InputError

log = logging.getLogger(__name__)
ImageInput = Union[str, Path, Image.Image, np.ndarray]
MAX_PIXELS = 64_000_000


def load_image(image: ImageInput, what: str = "image") -> Image.Image:
    """An RGB PIL image from a path, PIL image or array, with a clear error for anything unreadable."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise InputError(f"{what} {path} does not exist")
        if path.is_dir():
            raise InputError(f"{what} {path} is a directory, not an image file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as opened:
                    if opened.width * opened.height > MAX_PIXELS:
                        raise InputError(
                            f"{what} {path} is {opened.width}x{opened.height}, over {MAX_PIXELS:,} pixels; "
                            "downscale it first"
                        )
                    if getattr(opened, "n_frames", 1) > 1:
                        log.warning("%s %s has %d frames; using the first", what, path, opened.n_frames)
                    opened.seek(0)
                    opened.load()
                    pil = opened.copy()
        except InputError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(f"{what} {path} is not a readable image ({type(exc).__name__}: {exc})") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"{what} {path} is corrupt or truncated ({exc})") from None
    elif isinstance(image, Image.Image):
        pil = image
    elif isinstance(image, np.ndarray):
        pil = _from_array(image, what)
    else:
        raise InputError(f"{what} must be a path, a PIL image or a numpy array, got {type(image).__name__}")
    if pil.width == 0 or pil.height == 0:
        raise InputError(f"{what} has zero size ({pil.width}x{pil.height})")
    return to_rgb(pil, what)


def _from_array(array: np.ndarray, what: str) -> Image.Image:
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise InputError(f"{what} array must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.size == 0:
        raise InputError(f"{what} array is empty (shape {array.shape})")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError(f"{what} array holds NaN or infinite values")
        array = np.clip(array, 0.0, 1.0) * 255.0 + 0.5
    elif array.dtype == np.uint16:
        array = array / 257.0 + 0.5
    elif array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"{what} array has dtype {array.dtype}; use uint8, uint16 or floats in 0..1")
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:  # a cast to uint8 would wrap around (300 -> 44, -5 -> 251)
            raise InputError(
                f"{what} array of dtype {array.dtype} has values {low}..{high}, outside 0..255; "
                "give uint8 (0..255), uint16 (0..65535) or floats (0..1)"
            )
    return Image.fromarray(array.astype(np.uint8), "RGBA" if array.shape[-1] == 4 else "RGB")


def to_rgb(image: Image.Image, what: str = "image") -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "F":  # 32-bit float: 0..1 when it fits there (as float arrays), else 0..255
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():
            raise InputError(f"{what} is a 32-bit float image with NaN or infinite values")
        top = 1.0 if array.max() <= 1.0 else 255.0
        return Image.fromarray((np.clip(array / top, 0, 1) * 255 + 0.5).astype(np.uint8)).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        return Image.fromarray((np.clip(array / top, 0, 1) * 255 + 0.5).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_to_model(image: Image.Image, resolution: int, multiple: int) -> Image.Image:
    """Resize to the model's working size (see the module docstring for the policy)."""
    if image.size == (resolution, resolution):
        return image
    scale = resolution / max(image.size)
    width = max(multiple, int(round(image.width * scale / multiple)) * multiple)
    height = max(multiple, int(round(image.height * scale / multiple)) * multiple)
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.LANCZOS)


def image_digest(image: Image.Image) -> str:
    digest = hashlib.sha256()
    digest.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def to_pil(pixels) -> Image.Image:
    """A PIL image from a (3, H, W) tensor in [0, 1]."""
    array = (pixels.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(array)
