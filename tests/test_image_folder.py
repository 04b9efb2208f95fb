"""Image folders as episodes: formats and modes convert, damaged files are all named, and classes learn."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from lightning.pytorch import seed_everything
from PIL import Image, ImageFile

from metaclinic.algorithms import ProtoNet
from metaclinic.data.cases import ImageCases
from metaclinic.data.image_folder import ImageFolderEpisodes, images_to_unit_range, read_image
from metaclinic.errors import DataError, MissingDataError
from metaclinic.models import Conv4

from .conftest import one_thread
from .test_maml import quiet_trainer

SPLITS = {"meta_train": ["c0", "c1"], "meta_val": ["c2", "c3"], "meta_test": ["c4", "c5"]}
# One file of each format per class; names sort in this order, the extension's case must not matter.
FILES = [
    ("0.png", "L", (40, 30)),
    ("1.JPG", "RGB", (20, 20)),
    ("2.bmp", "RGB", (33, 17)),
    ("3.tiff", "L", (16, 16)),
]


def brightness(class_index: int, file_index: int) -> int:
    """A distinct flat grey per image, so that order and identity can be read back from the pixels."""
    return 20 + 30 * class_index + 5 * file_index


@pytest.fixture
def formats_root(tmp_path: Path) -> Path:
    """Classes c0..c6 with a grayscale PNG, an RGB JPEG, a BMP and a TIFF each, at assorted sizes."""
    root = tmp_path / "scans"
    for c in range(7):
        folder = root / f"c{c}"
        folder.mkdir(parents=True)
        for j, (name, mode, size) in enumerate(FILES):
            Image.new(mode, size, brightness(c, j) if mode == "L" else (brightness(c, j),) * 3).save(
                folder / name, quality=95
            )
    (root / "c0" / "notes.txt").write_text("not an image")
    (root / "c0" / ".DS_Store").write_bytes(b"\0")
    return root


def make(root: Path, **overrides) -> ImageFolderEpisodes:
    settings = dict(SPLITS, root=root, n_way=2, n_shot=1, n_query=2, test_episodes=6, eval_meta_batch_size=3)
    return ImageFolderEpisodes(**{**settings, **overrides})


def write_noise_png(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 40), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_png_jpeg_bmp_tiff_load_resized_in_sorted_order(formats_root: Path, caplog: pytest.LogCaptureFixture):
    dm = make(formats_root, image_size=12)
    assert dm.example_shape == (1, 12, 12)
    with caplog.at_level(logging.INFO, logger="metaclinic.data.image_folder"):
        dm.setup()
    train = dm.pools["meta_train"]
    assert [c.key for c in train.classes] == ["c0", "c1"]
    assert {c.domain for c in train.classes} == {"scans"} and train.classes[0].name == "c0"
    assert train.class_sizes() == [4, 4]
    assert train.examples.shape == (8, 1, 12, 12) and train.examples.dtype == torch.uint8
    expected = torch.tensor([brightness(c, j) for c in (0, 1) for j in range(4)])
    means = train.examples.float().mean(dim=(1, 2, 3))
    assert torch.allclose(means, expected.float(), atol=2)  # JPEG is lossy, by a grey level or so
    assert torch.equal(train.examples[train.class_indices[1]], train.examples[4:])
    assert dm.pools["meta_test"].class_sizes() == [4, 4]
    assert "1 class folder(s)" in caplog.text and "['c6']" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 file(s)" in warnings[0] and "notes.txt" in warnings[0]
    assert ".DS_Store" not in caplog.text


def test_three_channels_repeat_grayscale_and_keep_colour(tmp_path: Path):
    write_noise_png(tmp_path / "gray.png")
    Image.new("RGB", (30, 30), (200, 100, 0)).save(tmp_path / "colour.bmp")
    gray = read_image(tmp_path / "gray.png", channels=3, image_size=20)
    assert gray.shape == (3, 20, 20) and (gray[0] == gray[1]).all() and (gray[0] == gray[2]).all()
    assert read_image(tmp_path / "colour.bmp", channels=3, image_size=8)[:, 0, 0].tolist() == [200, 100, 0]


def test_test_episodes_have_the_configured_shapes_and_distinct_images(formats_root: Path):
    dm = make(formats_root, channels=3, image_size=16)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    assert batch.support_x.shape == (3, 2 * 1, 3, 16, 16) and batch.query_x.shape == (3, 2 * 2, 3, 16, 16)
    assert batch.support_x.dtype == torch.uint8
    for task in batch:
        rows = torch.cat([task.support_x, task.query_x]).flatten(1)
        assert len(torch.unique(rows, dim=0)) == len(rows)
    raw = batch.support_x.clone()
    inputs = dm.on_after_batch_transfer(batch, 0).support_x
    assert inputs.dtype == torch.float32 and torch.allclose(inputs, raw / 127.5 - 1)


@pytest.mark.parametrize(
    ("mode", "pixels", "expected"),
    [
        ("I;16", np.array([[0, 1000], [2000, 4000]], dtype=np.uint16), [[0, 64], [128, 255]]),  # 12-bit data
        ("RGBA", np.full((2, 2, 4), [90, 90, 90, 0], dtype=np.uint8), [[90, 90], [90, 90]]),  # alpha dropped
    ],
)
def test_high_bit_depth_and_alpha_convert(tmp_path: Path, mode: str, pixels: np.ndarray, expected: list):
    Image.fromarray(pixels).save(tmp_path / "image.png")
    assert Image.open(tmp_path / "image.png").mode == mode
    assert read_image(tmp_path / "image.png", channels=1, image_size=2)[0].tolist() == expected


def stretched(pixels: np.ndarray) -> np.ndarray:
    """The documented mapping of deep images: their own minimum to 0 and maximum to 255."""
    pixels = pixels.astype(np.float64)
    return np.rint((pixels - pixels.min()) * 255 / (pixels.max() - pixels.min())).astype(np.uint8)


def twelve_bit_rgb(size: int = 5) -> np.ndarray:
    """A square 12-bit RGB image (0..4095 in 16-bit samples) holding both ends of the range."""
    pixels = np.random.default_rng(0).integers(0, 4096, size=(size, size, 3), dtype=np.uint16)
    pixels[0, 0], pixels[-1, -1] = [0, 0, 0], [4095, 4095, 4095]
    return pixels


@pytest.mark.parametrize(
    ("layout", "options"),
    [
        ("contiguous", {}),
        ("planar", {"planarconfig": "separate"}),
        ("with alpha", {"extrasamples": ["unassalpha"]}),
        ("deflate", {"compression": "zlib"}),
    ],
)
def test_12_bit_rgb_tiff_is_read_at_full_depth_and_stretched(tmp_path: Path, layout: str, options: dict):
    pixels = twelve_bit_rgb()
    stored = pixels
    if layout == "planar":
        stored = pixels.transpose(2, 0, 1)
    elif layout == "with alpha":
        stored = np.concatenate([pixels, np.full((5, 5, 1), 7, np.uint16)], axis=2)
    tifffile.imwrite(tmp_path / "cells.tif", stored, photometric="rgb", **options)
    if layout == "contiguous":
        with Image.open(tmp_path / "cells.tif") as image:
            assert np.asarray(image).max() == 15  # what Pillow alone makes of it: near black
    got = read_image(tmp_path / "cells.tif", channels=3, image_size=5)  # the image's own size: no resampling
    assert got.shape == (3, 5, 5) and got.max() == 255 and got.min() == 0
    assert np.array_equal(got, stretched(pixels).transpose(2, 0, 1))  # so also every pixel's order kept


def test_12_bit_rgb_tiffs_in_an_image_folder_span_the_full_range(tmp_path: Path):
    pixels = twelve_bit_rgb(8)
    for c in range(6):
        (tmp_path / f"c{c}").mkdir()
        for i in range(3):
            tifffile.imwrite(tmp_path / f"c{c}" / f"scan{i}.TIFF", pixels // (i + 1), photometric="rgb")
    dm = make(tmp_path, channels=3, image_size=8)
    dm.setup()
    examples = dm.pools["meta_train"].examples
    assert examples.shape == (6, 3, 8, 8)
    assert (
        examples.amax(dim=(1, 2, 3)).tolist() == [255] * 6
        and examples.amin(dim=(1, 2, 3)).tolist() == [0] * 6
    )
    assert torch.equal(examples[0], torch.from_numpy(stretched(pixels).transpose(2, 0, 1)))


@pytest.mark.parametrize(
    "pixels",
    [
        np.array([[0, 1000], [2000, 4095]], dtype=np.uint16),  # 12-bit grayscale in 16-bit samples
        np.array([[-0.5, 0.0], [0.25, 1.5]], dtype=np.float32),  # float data, outside 0..1 too
        np.array([[[0.0, 0.5, 1.0], [2.0, 2.0, 2.0]], [[0, 0, 0], [4, 3, 2]]], dtype=np.float32),  # float RGB
    ],
    ids=["uint16-gray", "float32-gray", "float32-rgb"],
)
def test_16_bit_and_float_tiffs_are_stretched_by_their_own_range(tmp_path: Path, pixels: np.ndarray):
    tifffile.imwrite(tmp_path / "image.tiff", pixels)
    channels = 3 if pixels.ndim == 3 else 1
    got = read_image(tmp_path / "image.tiff", channels=channels, image_size=2)
    expected = stretched(pixels)
    assert np.array_equal(got, expected[None] if channels == 1 else expected.transpose(2, 0, 1))
    assert got.max() == 255 and got.min() == 0


def test_8_bit_rgb_tiff_reads_as_pillow_reads_it(tmp_path: Path):
    pixels = np.random.default_rng(1).integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", pixels, photometric="rgb")
    with Image.open(tmp_path / "rgb.tif") as image:
        expected = np.asarray(image.convert("RGB").resize((4, 4), Image.Resampling.BILINEAR))
    assert np.array_equal(
        read_image(tmp_path / "rgb.tif", channels=3, image_size=4), expected.transpose(2, 0, 1)
    )


def test_multi_page_tiff_gives_its_first_page(tmp_path: Path):
    pages = np.stack([np.array([[0, 100], [200, 300]], np.uint16), np.full((2, 2), 9, np.uint16)])
    tifffile.imwrite(tmp_path / "stack.tif", pages, photometric="minisblack")
    assert read_image(tmp_path / "stack.tif", channels=1, image_size=2)[0].tolist() == [[0, 85], [170, 255]]


def test_16_bit_grayscale_tiff_tifffile_cannot_decompress_is_still_read_by_pillow(tmp_path: Path):
    Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)).save(
        tmp_path / "lzw.tif", compression="tiff_lzw"
    )
    assert read_image(tmp_path / "lzw.tif", channels=1, image_size=2)[0].tolist() == [[0, 64], [128, 255]]


def test_colour_tiff_tifffile_cannot_decompress_is_an_error_not_8_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    tifffile.imwrite(tmp_path / "deflate.tif", twelve_bit_rgb(), photometric="rgb", compression="zlib")
    monkeypatch.setattr(tifffile.TIFF, "DECOMPRESSORS", {1: None})  # as without imagecodecs for LZW
    with pytest.raises(OSError, match=r"ADOBE_DEFLATE-compressed 16-bit TIFF with 3 channels.*imagecodecs"):
        read_image(tmp_path / "deflate.tif", channels=3, image_size=4)


def test_damaged_tiffs_are_named_in_the_image_folder_error(formats_root: Path):
    truncated, junk = formats_root / "c1" / "deep.tif", formats_root / "c2" / "junk.tiff"
    tifffile.imwrite(truncated, twelve_bit_rgb(64), photometric="rgb")
    truncate(truncated)
    junk.write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match=r"2 image file\(s\)") as error:
        make(formats_root).setup()
    message = str(error.value)
    assert f"{truncated}: OSError: TIFF image data cannot be read, the file is truncated" in message
    assert f"{junk}: UnidentifiedImageError" in message


def test_cases_for_a_grayscale_model_read_deep_colour_tiffs_at_full_depth(tmp_path: Path):
    gray = np.repeat(np.array([[0.0, 0.5], [1.0, 2.0]], np.float32)[..., None], 3, axis=2)
    tifffile.imwrite(tmp_path / "gray_as_rgb.tif", gray, photometric="rgb")  # Pillow cannot open float RGB
    tifffile.imwrite(tmp_path / "colour.tif", twelve_bit_rgb(), photometric="rgb")
    reader = ImageCases(1, 2, images_to_unit_range)
    cases = reader.read_cases(tmp_path / "gray_as_rgb.tif")
    assert torch.equal(
        cases.x, images_to_unit_range(torch.tensor([[[[0, 64], [128, 255]]]], dtype=torch.uint8))
    )
    with pytest.raises(DataError, match=r"colour\.tif: a colour image"):
        reader.read_cases(tmp_path / "colour.tif")


def test_palette_images_convert(tmp_path: Path):
    image = Image.new("P", (4, 4))
    image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    image.putpixel((0, 0), 1)
    image.save(tmp_path / "palette.png")
    pixels = read_image(tmp_path / "palette.png", channels=1, image_size=4)
    assert pixels[0, 0, 0] == 255 and pixels[0, 3, 3] == 0


def test_truncated_png_is_named_even_when_pillow_is_told_to_accept_it(
    formats_root: Path, monkeypatch: pytest.MonkeyPatch
):
    bad = formats_root / "c4" / "4.png"
    write_noise_png(bad)
    truncate(bad)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some libraries set it, globally
    with pytest.raises(DataError, match=r"1 image file\(s\)") as error:
        make(formats_root).setup()
    assert f"{bad}: OSError" in str(error.value) and "truncated" in str(error.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_every_bad_file_is_listed_in_one_error(formats_root: Path):
    truncated, junk = formats_root / "c0" / "4.png", formats_root / "c3" / "scan.jpeg"
    write_noise_png(truncated)
    truncate(truncated)
    junk.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"2 image file\(s\)") as error:
        make(formats_root).setup()
    assert str(truncated) in str(error.value) and str(junk) in str(error.value)


def test_long_lists_of_bad_files_are_cut(tmp_path: Path):
    for c in range(6):
        write_noise_png(tmp_path / f"c{c}" / "ok.png")
    for i in range(25):
        (tmp_path / "c1" / f"junk{i:02d}.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"25 image file\(s\)") as error:
        make(tmp_path).setup()
    message = str(error.value)
    assert "junk19.png" in message and "junk20.png" not in message and "... and 5 more" in message


def test_empty_class_folder_is_named(formats_root: Path):
    empty = formats_root / "c7"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(DataError, match="empty class folder") as error:
        make(formats_root, meta_test=["c4", "c7"]).setup()
    assert str(empty) in str(error.value)


def test_unknown_class_names_are_listed_with_the_available_ones(formats_root: Path):
    with pytest.raises(DataError, match=r"data.meta_test: \['c9'\].*\['c0', 'c1', .*'c6'\]"):
        make(formats_root, meta_test=["c4", "c9"]).setup()


def test_images_directly_in_root_get_a_hint(tmp_path: Path):
    write_noise_png(tmp_path / "c0.png")
    with pytest.raises(DataError, match="put each class's images in a sub-folder"):
        make(tmp_path).setup()


def test_missing_root_is_named(tmp_path: Path):
    with pytest.raises(MissingDataError, match=str(tmp_path / "nowhere")):
        make(tmp_path / "nowhere").setup()


@pytest.mark.parametrize(
    ("setting", "message"), [({"channels": 2}, "channels must be 1"), ({"image_size": 0}, "image_size")]
)
def test_bad_settings_are_rejected(tmp_path: Path, setting: dict, message: str):
    with pytest.raises(DataError, match=message):
        make(tmp_path, **setting)


def write_learnable_folder(root: Path, classes: int = 15, per_class: int = 8, seed: int = 0) -> None:
    """Each class a faint random 4x4 pattern of grey (upsampled to 32x32) under strong pixel noise."""
    rng = np.random.default_rng(seed)
    templates = (128 + rng.uniform(-25, 25, size=(classes, 4, 4))).repeat(8, axis=1).repeat(8, axis=2)
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(templates[c] + rng.normal(0, 40, size=(32, 32)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c:02d}" / f"{i}.png")


@pytest.fixture(name="one_thread")
def one_thread_fixture():
    """Conv-4 on tiny images gains nothing from threads, and on a busy machine they cost up to ten times."""
    with one_thread():
        yield


@pytest.mark.usefixtures("one_thread")
def test_protonet_learns_the_classes_of_an_image_folder(tmp_path: Path):
    seed_everything(0)
    write_learnable_folder(tmp_path)
    names = [f"class{c:02d}" for c in range(15)]
    data = ImageFolderEpisodes(
        tmp_path,
        meta_train=names[:5],
        meta_val=names[5:10],
        meta_test=names[10:],
        n_way=5,
        n_shot=2,
        n_query=4,
        meta_batch_size=4,
        meta_batches_per_epoch=10,
        test_episodes=40,
    )
    model = ProtoNet(
        Conv4(input_shape=data.example_shape, hidden=16),
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
    )
    trainer = quiet_trainer(max_steps=40)
    trainer.test(model, datamodule=data, verbose=False)
    before = model.test_report.metrics["accuracy"]
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    after = model.test_report.metrics["accuracy"]
    print(f"ProtoNet on an image folder: {before} -> {after}")
    assert after.mean - after.ci95 > 0.5, f"5-way accuracy {after} (chance is 20%)"
    assert after.mean > before.mean + 0.2, f"meta-training did not help: {before} -> {after}"


def test_a_float_tiff_with_nan_pixels_is_an_error_naming_it(tmp_path: Path):
    pixels = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    pixels[3, 4] = np.nan
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, pixels)
    with pytest.raises(ValueError, match=r"1 of 256 pixel values are NaN or infinite"):
        read_image(path, channels=1, image_size=16)
