from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prmagic_core.data import shapeworld
from prmagic_core.data.folder import load_episode, load_episodes, save_episode
from prmagic_core.errors import InputError

SAMPLES = Path(__file__).resolve().parent.parent / "data_samples" / "shapeworld"

# An 8x6 (width x height) scene: a 3x3 foreground square, nonzero somewhere in every channel.
RGB = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
FOREGROUND = np.zeros((6, 8), dtype=bool)
FOREGROUND[1:4, 2:5] = True


def write(folder: Path, name: str, image: Image.Image) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / name)
    return folder / name


def mask_image(mode: str = "L") -> Image.Image:
    return Image.fromarray(FOREGROUND.astype(np.uint8) * 255).convert(mode)


def minimal_episode(folder: Path) -> Path:
    write(folder, "support.png", Image.fromarray(RGB))
    write(folder, "support_mask.png", mask_image())
    write(folder, "query.jpg", Image.fromarray(RGB))
    return folder


def assert_same_episode(loaded, original):
    assert loaded.class_name == original.class_name
    assert loaded.kind == original.kind
    assert loaded.shots == original.shots
    for a, b in zip(loaded.support_images + loaded.support_masks, original.support_images + original.support_masks):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.query_image, original.query_image)
    np.testing.assert_array_equal(loaded.query_mask, original.query_mask)


@pytest.mark.parametrize("kind,shots", [("object", 1), ("part", 1), ("object", 2)])
def test_save_then_load_is_identical(tmp_path, kind, shots):
    original = shapeworld.episodes(1, seed=3, kind=kind, shots=shots, size=64)[0]
    folder = save_episode(original, tmp_path / "ep")
    loaded = load_episode(folder)
    assert_same_episode(loaded, original)
    assert loaded.name == "ep"


def test_save_refuses_a_non_empty_folder(tmp_path):
    episode = load_episode(minimal_episode(tmp_path / "ep"))
    with pytest.raises(FileExistsError, match="ep"):
        save_episode(episode, tmp_path / "ep")


def test_minimal_folder_defaults(tmp_path):
    episode = load_episode(minimal_episode(tmp_path / "my-cat"))
    assert episode.class_name == "my-cat"
    assert episode.kind == "object"
    assert episode.query_mask is None
    assert episode.query_image.shape == (6, 8, 3)
    np.testing.assert_array_equal(episode.support_masks[0], FOREGROUND)


def test_class_txt_overrides_the_folder_name(tmp_path):
    folder = minimal_episode(tmp_path / "ep")
    (folder / "class.txt").write_text("  tabby cat\n")
    assert load_episode(folder).class_name == "tabby cat"


def test_image_modes_become_rgb_uint8(tmp_path):
    folder = minimal_episode(tmp_path / "ep")
    (folder / "support.png").unlink()
    (folder / "query.jpg").unlink()
    alpha = np.full((6, 8), 7, dtype=np.uint8)
    write(folder, "support.png", Image.fromarray(np.dstack([RGB, alpha]), "RGBA"))
    gray = RGB[..., 0]
    write(folder, "query.png", Image.fromarray(gray, "L"))
    episode = load_episode(folder)
    np.testing.assert_array_equal(episode.support_images[0], RGB)
    np.testing.assert_array_equal(episode.query_image, np.dstack([gray] * 3))

    (folder / "query.png").unlink()
    palette = Image.fromarray(FOREGROUND.astype(np.uint8), "P")
    palette.putpalette([10, 20, 30, 200, 100, 0])
    write(folder, "query.png", palette)
    query = load_episode(folder).query_image
    assert query.dtype == np.uint8
    np.testing.assert_array_equal(query[FOREGROUND], np.tile([200, 100, 0], (FOREGROUND.sum(), 1)))
    np.testing.assert_array_equal(query[~FOREGROUND], np.tile([10, 20, 30], ((~FOREGROUND).sum(), 1)))


def palette_mask() -> Image.Image:
    """Background is palette index 0 coloured white, foreground index 1 coloured black."""
    image = Image.fromarray(FOREGROUND.astype(np.uint8), "P")
    image.putpalette([255, 255, 255, 0, 0, 0])
    return image


def rgb_mask(alpha: bool) -> Image.Image:
    colour = np.zeros((6, 8, 4 if alpha else 3), dtype=np.uint8)
    colour[FOREGROUND, 0] = 255  # red foreground
    if alpha:
        colour[..., 3] = 255  # opaque black background must still read as background
    return Image.fromarray(colour, "RGBA" if alpha else "RGB")


@pytest.mark.parametrize(
    "make_mask",
    [
        lambda: mask_image("L"),
        lambda: Image.fromarray(FOREGROUND.astype(np.uint8), "L"),  # 0/1 values, not 0/255
        lambda: mask_image("1"),
        lambda: rgb_mask(alpha=False),
        lambda: rgb_mask(alpha=True),
        palette_mask,
    ],
    ids=["L", "L-0-1", "1", "RGB", "RGBA", "P-index-not-colour"],
)
def test_mask_modes(tmp_path, make_mask):
    folder = minimal_episode(tmp_path / "ep")
    write(folder, "support_mask.png", make_mask())
    write(folder, "query_mask.png", make_mask())
    episode = load_episode(folder)
    np.testing.assert_array_equal(episode.support_masks[0], FOREGROUND)
    np.testing.assert_array_equal(episode.query_mask, FOREGROUND)


def test_transparent_pixels_of_a_mask_are_background(tmp_path):
    folder = minimal_episode(tmp_path / "ep")
    white = np.full((6, 8, 4), 255, dtype=np.uint8)
    white[~FOREGROUND, 3] = 0
    write(folder, "support_mask.png", Image.fromarray(white, "RGBA"))
    np.testing.assert_array_equal(load_episode(folder).support_masks[0], FOREGROUND)


def test_k_shot_supports_follow_their_numbers(tmp_path):
    folder = tmp_path / "ep"
    # written out of order; support_10 must come after support_9, not after support_1
    for number in (10, 2, 1, 9, 3, 4, 5, 6, 7, 8):
        write(folder, f"support_{number}.png", Image.fromarray(np.full((6, 8, 3), number, np.uint8)))
        write(folder, f"support_{number}_mask.png", mask_image())
    write(folder, "query.jpeg", Image.fromarray(RGB))
    episode = load_episode(folder)
    assert episode.shots == 10
    assert [int(image[0, 0, 0]) for image in episode.support_images] == list(range(1, 11))


def test_a_gap_in_the_shot_numbers_names_the_missing_image(tmp_path):
    folder = tmp_path / "ep"
    for number in (1, 3):
        write(folder, f"support_{number}.png", Image.fromarray(RGB))
        write(folder, f"support_{number}_mask.png", mask_image())
    write(folder, "query.png", Image.fromarray(RGB))
    with pytest.raises(InputError, match="support_2"):
        load_episode(folder)


def test_mask_size_mismatch_names_both_files_and_sizes(tmp_path):
    folder = minimal_episode(tmp_path / "ep")
    write(folder, "support_mask.png", Image.new("L", (5, 4), 255))
    with pytest.raises(ValueError) as error:
        load_episode(folder)
    message = str(error.value)
    assert str(folder / "support_mask.png") in message and "5x4" in message
    assert str(folder / "support.png") in message and "8x6" in message


def test_query_mask_size_mismatch_is_an_error(tmp_path):
    folder = minimal_episode(tmp_path / "ep")
    write(folder, "query_mask.png", Image.new("L", (8, 5)))
    with pytest.raises(ValueError, match="query_mask.png.*query.jpg"):
        load_episode(folder)


@pytest.mark.parametrize(
    "missing,expected",
    [
        ("support.png", "support.<jpg|jpeg|png>"),
        ("support_mask.png", "support_mask.png"),
        ("query.jpg", "query.<jpg|jpeg|png>"),
    ],
)
def test_missing_file_names_the_expected_path(tmp_path, missing, expected):
    folder = minimal_episode(tmp_path / "ep")
    (folder / missing).unlink()
    with pytest.raises(InputError) as error:
        load_episode(folder)
    assert str(folder / expected) in str(error.value)


def test_empty_support_mask_names_the_file(tmp_path):
    folder = minimal_episode(tmp_path / "ep")
    write(folder, "support_mask.png", Image.new("L", (8, 6)))
    with pytest.raises(ValueError, match="support_mask.png.*empty"):
        load_episode(folder)


def test_an_empty_query_mask_is_allowed(tmp_path):
    folder = minimal_episode(tmp_path / "ep")
    write(folder, "query_mask.png", Image.new("L", (8, 6)))
    assert not load_episode(folder).query_mask.any()


def test_load_episodes_sorts_by_folder_name(tmp_path):
    for name in ("b", "c", "a"):
        minimal_episode(tmp_path / name)
    assert [episode.name for episode in load_episodes(tmp_path)] == ["a", "b", "c"]


def test_a_root_without_episodes_is_an_error_naming_it(tmp_path):
    (tmp_path / "notes.txt").write_text("no episodes here")
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_episodes(tmp_path)


def test_shipped_samples_load_and_match_shapeworld():
    episodes = {episode.name: episode for episode in load_episodes(SAMPLES)}
    expected = shapeworld.episodes(3, seed=0) + shapeworld.episodes(2, seed=0, kind="part")
    two_shot = shapeworld.episodes(1, seed=0, shots=2)[0]
    pairs = [(episodes[e.name], e) for e in expected] + [(episodes[f"{two_shot.name}-2shot"], two_shot)]
    assert len(episodes) == len(pairs)
    for loaded, original in pairs:
        assert (loaded.class_name, loaded.kind, loaded.shots) == (original.class_name, original.kind, original.shots)
        for a, b in zip(loaded.support_masks, original.support_masks):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(loaded.query_mask, original.query_mask)
        # images are shipped as JPEG, so close rather than identical
        difference = np.abs(loaded.query_image.astype(int) - original.query_image.astype(int))
        assert difference.mean() < 5


@pytest.mark.parametrize("stem", ["support", "query"])
def test_a_jpeg_mask_beside_the_missing_png_is_named(tmp_path, stem):
    folder = minimal_episode(tmp_path / "ep")
    (folder / f"{stem}_mask.png").unlink(missing_ok=True)  # the query's is optional: absent in minimal_episode
    write(folder, f"{stem}_mask.jpg", mask_image().convert("L"))
    with pytest.raises(InputError, match=f"{stem}_mask.png: missing mask: found {stem}_mask.jpg, but masks must be PNG"):
        load_episode(folder)


def test_an_episode_folder_given_as_the_root_says_so(tmp_path):
    folder = minimal_episode(tmp_path / "ep")
    with pytest.raises(InputError, match=f"{folder}: is one episode .*its parent {tmp_path}$"):
        load_episodes(folder)
