"""Few-shot episodes from a folder of images with one sub-folder per class, the layout most sets ship in."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image, ImageFile
from torch import Tensor

from metaclinic.data.datamodule import EpisodicDataModule
from metaclinic.data.pool import ClassInfo, ClassPool
from metaclinic.errors import DataError, MissingDataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_LISTED_PROBLEMS = 20
MAX_LISTED_IGNORED = 5
# Pillow modes with more than 8 bits per pixel; ``convert("L")`` clips them to 255 instead of scaling.
HIGH_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
TIFF_EXTENSIONS = (".tif", ".tiff")
# Colour models tifffile's deep pages are read in; others (palette, CMYK, YCbCr, ...) are left to Pillow.
FULL_DEPTH_PHOTOMETRICS = (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB)


def images_to_unit_range(x: Tensor) -> Tensor:
    """uint8 images to floats in [-1, 1]; done on the device so loaders move a quarter of the bytes."""
    return x.float().div_(127.5).sub_(1.0)


@contextlib.contextmanager
def truncated_images_fail() -> Iterator[None]:
    """Makes Pillow raise on truncated files even where other code set ``LOAD_TRUNCATED_IMAGES``.

    With that flag Pillow fills the missing rows with grey and says nothing, so a half-copied dataset would
    train silently on partly blank images.
    """
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _stretch_to_8_bit(pixels: np.ndarray) -> np.ndarray:
    """16-bit, 32-bit and float pixels to uint8 by the image's own minimum and maximum.

    Medical 16-bit files often use only 10-12 bits, so mapping the full 0..65535 range would leave them
    almost black; a constant image becomes black. Colour channels share one range, so hues are kept.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    if not np.isfinite(pixels).all():  # a NaN would make the whole image black, silently
        bad = int((~np.isfinite(pixels)).sum())
        raise ValueError(f"{bad} of {pixels.size} pixel values are NaN or infinite; expected finite values")
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    return np.rint(scaled).astype(np.uint8)


def _read_full_depth_tiff(path: Path) -> np.ndarray | None:
    """The first page of a TIFF deeper than 8 bits, as ``(H, W)`` or ``(H, W, 3)``; None leaves it to Pillow.

    Pillow reads 16-bit colour TIFFs as 8-bit (a 12-bit image comes out near black) and cannot open float
    colour ones. Only deep grayscale and RGB pages are read here (planar ones made channel-last, alpha
    dropped); 8-bit, palette or CMYK pages, files that are no TIFF to tifffile, and single-channel pages
    whose codec tifffile lacks without ``imagecodecs`` (e.g. LZW) are left to Pillow, which reads those.
    """
    try:
        tiff = tifffile.TiffFile(path)
    except tifffile.TiffFileError:
        return None
    with tiff:
        page = tiff.pages[0]
        if page.bitspersample <= 8 or page.photometric not in FULL_DEPTH_PHOTOMETRICS:
            return None
        if page.compression not in tifffile.TIFF.DECOMPRESSORS:
            if page.samplesperpixel == 1:
                return None
            codec = tifffile.COMPRESSION(page.compression).name
            raise OSError(
                f"{codec}-compressed {page.bitspersample}-bit TIFF with {page.samplesperpixel} channels: "
                "reading it at full depth needs the imagecodecs package"
            )
        if page.axes not in ("YX", "YXS", "SYX"):
            raise OSError(f"TIFF page with axes {page.axes}; only 2-D images are read, not volumes")
        try:
            pixels = page.asarray()
        except ValueError as error:  # tifffile's "failed to read N bytes" and decoder errors
            raise OSError(
                f"TIFF image data cannot be read, the file is truncated or damaged: {error}"
            ) from error
        if page.axes == "SYX":
            pixels = np.moveaxis(pixels, 0, -1)
        if pixels.ndim == 3:
            pixels = pixels[..., :3] if page.photometric == tifffile.PHOTOMETRIC.RGB else pixels[..., 0]
    return pixels


def decode_image(path: Path) -> Image.Image:
    """Decodes one file fully to an 8-bit Pillow image; deeper ones are stretched by their own range.

    TIFFs deeper than 8 bits are read at full depth with tifffile (see :func:`_read_full_depth_tiff`),
    other files with Pillow. Multi-page TIFFs give their first page.
    """
    if path.suffix.lower() in TIFF_EXTENSIONS and (pixels := _read_full_depth_tiff(path)) is not None:
        return Image.fromarray(_stretch_to_8_bit(pixels))
    with Image.open(path) as image:
        image.load()  # decodes the whole file now (Pillow is lazy), so a truncated one raises here
        if image.mode in HIGH_DEPTH_MODES:
            return Image.fromarray(_stretch_to_8_bit(np.asarray(image)))
        return image.copy()  # still usable once the file is closed


def read_image(path: Path, channels: int, image_size: int) -> np.ndarray:
    """Decodes one file fully and returns it as uint8 ``(channels, image_size, image_size)``.

    Any mode Pillow reads (palette, RGBA, CMYK, 16-bit, ...) is converted, and 16-bit and float TIFFs are
    read at full depth; alpha is dropped. Images are resized with antialiasing and stretched to a square:
    aspect ratios are not kept. Multi-page TIFFs give their first page.
    """
    image = decode_image(path).convert("L" if channels == 1 else "RGB")
    image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    pixels = np.array(image, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def list_image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files and other files under a class folder, sub-folders included, sorted; hidden ones skipped.

    Hidden entries (``.DS_Store``, ``.ipynb_checkpoints/``) are left out silently: they are never data.
    """
    images, others = [], []
    for directory, subdirectories, files in os.walk(folder, followlinks=True):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            path = Path(directory, name)
            (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    return sorted(images), sorted(others)


class ImageFolderEpisodes(EpisodicDataModule):
    """N-way K-shot tasks over a folder with one sub-folder of images per class (e.g. an exported dataset).

    ``root/<class>/*.png`` (or ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``, in any case); images in
    nested folders of a class folder belong to that class. The folder name is the class key the meta-splits
    list; every class gets ``root``'s name as its domain. Images are converted to ``channels`` (1: grayscale,
    3: RGB), resized to ``image_size`` x ``image_size`` and kept in memory as uint8, so every file is read
    once, at set-up; files that cannot be decoded completely and class folders without images stop set-up
    with one error listing them all. Files with other extensions are logged and left out.

    Args:
        root: folder holding one sub-folder per class.
        meta_train: class folder names of the meta-training classes.
        meta_val: class folder names of the meta-validation classes.
        meta_test: class folder names of the meta-test classes.
        image_size: height and width images are resized to.
        channels: 1 converts every image to grayscale, 3 to RGB.
        **kwargs: episode settings of :class:`EpisodicDataModule` (n_way, n_shot, n_query, ...).
    """

    def __init__(
        self,
        root: str | Path,
        meta_train: list[str],
        meta_val: list[str],
        meta_test: list[str],
        image_size: int = 28,
        channels: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if channels not in (1, 3):
            raise DataError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        if image_size < 1:
            raise DataError(f"data.image_size must be at least 1, got {image_size}")
        self.root = Path(root)
        self.class_names = {"meta_train": meta_train, "meta_val": meta_val, "meta_test": meta_test}
        for split, names in self.class_names.items():
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise DataError(f"data.{split} lists {repeated} more than once")
        self.image_size, self.channels = image_size, channels

    @property
    def example_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def class_folders(self) -> list[str]:
        """Names of the non-hidden sub-folders of ``root``, sorted: the classes the splits may use."""
        if not self.root.is_dir():
            raise MissingDataError(
                f"image folder {self.root} not found; point data.init_args.root at a folder with one "
                "sub-folder of images per class"
            )
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _check_class_names(self, available: list[str]) -> None:
        known = set(available)
        unknown = {
            split: [name for name in names if name not in known] for split, names in self.class_names.items()
        }
        if any(unknown.values()):
            named = "; ".join(f"data.{split}: {names}" for split, names in unknown.items() if names)
            hint = ""
            if not available and any(
                p.suffix.lower() in IMAGE_EXTENSIONS for p in self.root.iterdir() if p.is_file()
            ):
                hint = " It holds image files directly: put each class's images in a sub-folder of its own."
            raise DataError(
                f"unknown class folder(s) {named}; {self.root} has the class folders {available}.{hint}"
            )
        used = {name for names in self.class_names.values() for name in names}
        if unused := [name for name in available if name not in used]:
            log.info("%d class folder(s) of %s are in no meta-split: %s", len(unused), self.root, unused)

    def build_pools(self) -> dict[str, ClassPool]:
        self._check_class_names(self.class_folders())
        splits = {split: sorted(names) for split, names in self.class_names.items()}
        files: dict[str, list[Path]] = {}
        problems: list[str] = []
        ignored: list[Path] = []
        for name in (name for names in splits.values() for name in names):
            files[name], others = list_image_files(self.root / name)
            ignored += others
            if not files[name]:
                problems.append(
                    f"{self.root / name}: empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} file)"
                )
        if ignored:
            log.warning(
                "%d file(s) in class folders of %s are not %s images and are left out, e.g. %s",
                len(ignored),
                self.root,
                "/".join(IMAGE_EXTENSIONS),
                ", ".join(str(p.relative_to(self.root)) for p in ignored[:MAX_LISTED_IGNORED]),
            )
        domain = self.root.resolve().name
        pools = {}
        with truncated_images_fail():
            for split, names in splits.items():
                paths = [path for name in names for path in files[name]]
                examples = torch.empty((len(paths), *self.example_shape), dtype=torch.uint8)
                for i, path in enumerate(paths):
                    try:
                        examples[i] = torch.from_numpy(read_image(path, self.channels, self.image_size))
                    # Pillow's format plugins raise many types on damaged files (OSError, SyntaxError,
                    # struct.error, IndexError, ...); each is reported with its path, none is skipped.
                    except Exception as error:
                        problems.append(f"{path}: {type(error).__name__}: {error}")
                sizes = [len(files[name]) for name in names]
                starts = np.cumsum([0, *sizes]).tolist()[:-1]
                pools[split] = ClassPool(
                    examples,
                    [torch.arange(start, start + n) for start, n in zip(starts, sizes, strict=True)],
                    [ClassInfo(key=name, name=name, domain=domain) for name in names],
                )
        if problems:
            listed = "\n".join(f"  {p}" for p in sorted(problems)[:MAX_LISTED_PROBLEMS])
            if (more := len(problems) - MAX_LISTED_PROBLEMS) > 0:
                listed += f"\n  ... and {more} more"
            raise DataError(
                f"{len(problems)} image file(s) or class folder(s) under {self.root} cannot be used; "
                f"fix or remove them:\n{listed}"
            )
        return pools

    def prepare_inputs(self, x: Tensor) -> Tensor:
        """uint8 images to floats in [-1, 1]."""
        return images_to_unit_range(x)
