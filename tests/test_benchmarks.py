"""Benchmark loaders on miniature trees written in each real layout.

Images are random pixels saved losslessly (PNG bytes, whatever the file's extension), so a test
can tell which file an episode's image came from by comparing pixels.
"""
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from prmagic_core.data.benchmarks import BENCHMARKS, BenchmarkError, load_benchmark, resize_episode
from prmagic_core.data.benchmarks import coco, pascal_part
from prmagic_core.data.benchmarks._coco_masks import decode_segmentation, rle_counts_from_string
from prmagic_core.data.episode import Episode

SHAPE = (6, 8)


def write_image(path, rng, shape=SHAPE):
    pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")
    return pixels


def write_mask(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def random_mask(rng, shape=SHAPE):
    mask = rng.random(shape) < 0.5
    mask[0, 0] = True
    return mask


def write_pickle(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(value))


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def which(image, written):
    """The key of the written image whose pixels ``image`` has."""
    matches = [key for key, pixels in written.items() if np.array_equal(pixels, image)]
    assert len(matches) == 1, "an episode image matches no written image, or several"
    return matches[0]


def rle_encode(mask):
    """COCO's compressed RLE of a mask (``rleEncode`` + ``rleToString``), to test the decoder against."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = ([0] if flat[0] else []) + np.diff(edges).tolist()
    chars = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5
            more = value != -1 if chunk & 0x10 else value != 0
            chars.append(chr((chunk | 0x20 if more else chunk) + 48))
    return {"size": list(mask.shape), "counts": "".join(chars)}


def check_pairing(episode, written, shots, class_of):
    """Supports are distinct, none is the query, and all share the query's class; returns the query key."""
    query = which(episode.query_image, written)
    supports = [which(image, written) for image in episode.support_images]
    assert len(set(supports)) == shots and query not in supports
    assert all(class_of(key) == episode.class_name for key in [query, *supports])
    return query


# --- FSS-1000 -------------------------------------------------------------------------------


def make_fss(root, classes=("cat", "dog", "eel")):
    rng = np.random.default_rng(1)
    images, masks = {}, {}
    for name in classes:
        for n in range(1, 11):
            images[name, n] = write_image(root / "data" / name / f"{n}.jpg", rng)
            masks[name, n] = random_mask(rng)
            write_mask(root / "data" / name / f"{n}.png", masks[name, n])
    (root / "splits").mkdir()
    (root / "splits" / "test.txt").write_text("\n".join(reversed(classes)) + "\n")
    (root / "splits" / "trn.txt").write_text("ant\n")
    return images, masks


def test_fss_makes_every_test_image_a_query_once(tmp_path):
    images, masks = make_fss(tmp_path)
    episodes = load_benchmark("fss", tmp_path, shots=2, size=None)
    assert len(episodes) == 30 and episodes.classes == ("cat", "dog", "eel")
    queries = []
    for i, episode in enumerate(episodes):
        query = check_pairing(episode, images, 2, class_of=lambda key: key[0])
        assert np.array_equal(episode.query_mask, masks[query])
        assert episode.name == episodes.episode_ids[i] and episode.kind == "object"
        queries.append(query)
    assert sorted(queries) == sorted(images)
    assert episodes.episode_ids[10] == "fss-fold0-2shot-seed0-00010-dog-1"


def test_fss_episodes_are_seeded(tmp_path):
    images, _ = make_fss(tmp_path)

    def support_keys(seed):
        episodes = load_benchmark("fss", tmp_path, shots=3, seed=seed, size=None)
        return [[which(im, images) for im in episodes[i].support_images] for i in (0, 13, 29)]

    assert support_keys(0) == support_keys(0)
    assert support_keys(0) != support_keys(1)


def test_listing_episodes_reads_no_image(tmp_path):
    make_fss(tmp_path)
    for path in (tmp_path / "data").rglob("*.png"):
        path.unlink()
    episodes = load_benchmark("fss", tmp_path)
    assert len(episodes) == 30 and len(set(episodes.episode_ids)) == 30
    with pytest.raises(BenchmarkError, match="no such file.*mask"):
        episodes[0]


# --- COCO-20i -------------------------------------------------------------------------------


def test_coco_fold_classes_interleave():
    assert coco.fold_class_indices(3) == [3 + 4 * v for v in range(20)]


def make_coco(root, fold):
    """Four val images, each holding all 20 test classes of the fold (and class 2, not tested)."""
    rng = np.random.default_rng(2)
    values = np.array([0, 3] + [c + 1 for c in coco.fold_class_indices(fold)])
    images, labels = {}, {}
    for n in range(1, 5):
        name = f"val2014/COCO_val2014_{n:012d}.jpg"
        images[name] = write_image(root / name, rng)
        labels[name] = rng.permutation(np.resize(values, SHAPE[0] * SHAPE[1])).reshape(SHAPE).astype(np.uint8)
        path = root / "annotations" / f"val2014/COCO_val2014_{n:012d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels[name]).save(path)
    # The first image is listed twice, as HSNet's lists sometimes do.
    names = [*images, next(iter(images))]
    write_pickle(root / "splits" / "val" / f"fold{fold}.pkl", {c: names for c in coco.fold_class_indices(fold)})
    return images, labels


def test_coco_draws_1000_episodes_from_the_fold_classes(tmp_path):
    images, labels = make_coco(tmp_path, fold=1)
    episodes = load_benchmark("coco", tmp_path, fold=1, shots=2, size=None)
    assert len(episodes) == 1000
    assert episodes.classes == tuple(coco.CLASS_NAMES[c] for c in coco.fold_class_indices(1))
    for episode in (episodes[i] for i in range(0, 1000, 97)):
        query = check_pairing(episode, images, 2, class_of=lambda key: episode.class_name)
        c = coco.CLASS_NAMES.index(episode.class_name)
        assert np.array_equal(episode.query_mask, labels[query] == c + 1)


def test_coco_split_without_a_test_class_names_it(tmp_path):
    make_coco(tmp_path, fold=0)
    write_pickle(tmp_path / "splits" / "val" / "fold0.pkl", {4: ["val2014/x.jpg"]})
    with pytest.raises(BenchmarkError, match=r"fold0\.pkl: no image list for class 0 \(person\)"):
        load_benchmark("coco", tmp_path, fold=0)


# --- LVIS-92i -------------------------------------------------------------------------------


def make_lvis(root):
    """Twenty categories in three of four images, plus one single-image category that 1-shot drops."""
    rng = np.random.default_rng(3)
    images = {f"val2017/{n:012d}.jpg": None for n in range(1, 5)}
    for name in images:
        images[name] = write_image(root / name, rng)
    truth = {}
    annotations = {99: {"val2017/000000000001.jpg": {"annotations": [{"segmentation": random_mask(rng)}]}}}
    for cid in range(1, 21):
        annotations[cid] = {}
        for name in list(images)[cid % 2 : cid % 2 + 3]:
            mask = random_mask(rng)
            # Two annotations of the category in one image: an RLE and a mask array.
            annotations[cid][name] = {"annotations": [{"segmentation": rle_encode(mask & ~mask[:, ::-1])},
                                                      {"segmentation": mask & mask[:, ::-1]}]}
            truth[cid, name] = mask
    write_pickle(root / "lvis_val.pkl", annotations)
    return images, truth


def test_lvis_deals_categories_into_ten_folds_and_cycles_them(tmp_path):
    images, truth = make_lvis(tmp_path)
    episodes = load_benchmark("lvis", tmp_path, fold=1, shots=1, size=None)
    assert len(episodes) == 2300 and episodes.classes == ("2", "12")
    for i in (0, 1, 2, 1001):
        episode = episodes[i]
        assert episode.class_name == episodes.classes[i % 2]
        query = check_pairing(episode, images, 1, class_of=lambda key: episode.class_name)
        assert np.array_equal(episode.query_mask, truth[int(episode.class_name), query])


def test_polygons_rasterize_as_pycocotools():
    # pycocotools gives the box polygon (0, 0)-(10, 10) an area of 100 pixels, rows and columns 0..9.
    mask = decode_segmentation([[0, 0, 10, 0, 10, 10, 0, 10]], 12, 12)
    assert mask.sum() == 100 and mask[:10, :10].all()
    triangle = decode_segmentation([[0.5, 0.5, 3.5, 0.5, 2, 3.7]], 6, 6)
    assert np.argwhere(triangle).tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]


def test_compressed_rle_decodes_as_pycocotools():
    assert rle_counts_from_string("151M") == [1, 5, 1, 2]  # the fourth run is stored as 2 - 5
    mask = np.random.default_rng(4).random((37, 29)) < 0.3
    assert np.array_equal(decode_segmentation(rle_encode(mask), 37, 29), mask)


# --- PACO-Part ------------------------------------------------------------------------------


def make_paco(root):
    """Eight train categories; fold 0 deals 101 and 105, and 105 has too few val images for 1-shot."""
    rng = np.random.default_rng(5)
    shape = (12, 16)
    names = {image_id: f"val2017/{image_id:012d}.jpg" for image_id in (7, 8, 9)}
    images = {image_id: write_image(root / name, rng, shape) for image_id, name in names.items()}
    boxes = {7: [2, 1, 9.6, 8], 8: [0, 0, 16, 12], 9: [5.5, 3, 6, 7.2]}
    truth, img2anno = {}, {}
    for image_id, box in boxes.items():
        part = random_mask(rng, shape)
        truth[image_id] = part
        img2anno[image_id] = [{"category_id": 101, "obj_ann_id": 1, "obj_bbox": box, "segmentation": rle_encode(part)}]
    # Image 8 holds a second object of category 101 (with the same box), which the draw may pick.
    img2anno[8].append({"category_id": 101, "obj_ann_id": 2, "obj_bbox": boxes[8], "segmentation": rle_encode(~part)})
    cid2img = {101: [{i: f"/data/coco/{name}"} for i, name in names.items()] + [{7: names[7]}], 105: [{7: names[7]}]}
    write_pickle(root / "paco" / "paco_part_val.pkl", {"cid2img": cid2img, "img2anno": img2anno})
    train_categories = {cid: [] for cid in range(101, 109)}
    write_pickle(root / "paco" / "paco_part_train.pkl", {"cid2img": train_categories, "img2anno": {}})
    return images, boxes, truth


def test_paco_crops_to_the_object_box(tmp_path):
    images, boxes, truth = make_paco(tmp_path)
    episodes = load_benchmark("paco", tmp_path, fold=0, shots=2, size=None)
    assert len(episodes) == 2500 and episodes.classes == ("101",)
    for episode in (episodes[i] for i in range(8)):
        assert episode.kind == "part"
        crops = {}
        for image_id, (x, y, w, h) in boxes.items():
            crops[image_id] = images[image_id][int(y) : int(y + h), int(x) : int(x + w)]
        query = check_pairing(episode, crops, 2, class_of=lambda key: "101")
        if query != 8:
            x, y, w, h = boxes[query]
            assert np.array_equal(episode.query_mask, truth[query][int(y) : int(y + h), int(x) : int(x + w)])


# --- Pascal-Part ----------------------------------------------------------------------------


def make_pascal_part(root):
    rng = np.random.default_rng(6)
    shape = (10, 12)
    ids = ["2008_000001", "2008_000002", "2008_000003"]
    images = {i: write_image(root / "JPEGImages" / f"{i}.jpg", rng, shape) for i in ids}
    truth = {}
    for image_id in ids:
        head, tail = random_mask(rng, shape), random_mask(rng, shape)
        truth[image_id] = head
        cat = {"name": "cat", "bndbox": {"xmin": "1", "ymin": "2", "xmax": "11", "ymax": "9"},
               "parts": [{"name": "HEAD", "mask": [rle_encode(head)]}, {"name": "TAIL", "mask": [rle_encode(tail)]}]}
        dog = {"name": "dog", "bndbox": {"xmin": 0, "ymin": 0, "xmax": 5, "ymax": 5},
               "parts": [{"name": "HEAD", "mask": [rle_encode(~head)]}]}
        write_json(root / pascal_part.ANNOTATION_FOLDER / f"{image_id}.json", {"object": [dog, cat]})
    listing = {"train": ["2009_000001"], "val": ids}
    index = {"animals": {"object": {
        "cat": {"part": {"HEAD": listing, "TAIL": listing, "EAR": {"train": [], "val": ids}}},
        "aeroplane": {"part": {"TAIL": listing}},
    }}, "indoor": {"object": {}}}
    write_json(root / pascal_part.INDEX_FILE, index)
    return images, truth


def test_pascal_part_cycles_its_classes(tmp_path):
    images, truth = make_pascal_part(tmp_path)
    episodes = load_benchmark("pascal_part", tmp_path, fold=0, shots=2, size=None)
    # Matcher counts every val listing of the group: 4 parts x 3 images.
    assert len(episodes) == 12 and episodes.classes == ("cat+HEAD", "cat+TAIL")
    crops = {image_id: pixels[2:9, 1:11] for image_id, pixels in images.items()}
    for i, episode in enumerate(episodes):
        assert episode.class_name == episodes.classes[i % 2] and episode.kind == "part"
        query = check_pairing(episode, crops, 2, class_of=lambda key: episode.class_name)
        if episode.class_name == "cat+HEAD":
            assert np.array_equal(episode.query_mask, truth[query][2:9, 1:11])


def test_pascal_part_group_without_classes_says_so(tmp_path):
    make_pascal_part(tmp_path)
    with pytest.raises(BenchmarkError, match="no indoor part with more than 1 val images"):
        load_benchmark("pascal_part", tmp_path, fold=1)


# --- DIS5K ----------------------------------------------------------------------------------


def test_dis5k_makes_every_test_image_a_query_once(tmp_path):
    rng = np.random.default_rng(7)
    images = {}
    for group, count in (("DIS-TE1", 3), ("DIS-TE2", 4)):
        for n in range(count):
            images[group, n] = write_image(tmp_path / "Test" / "im" / group / f"{n}.jpg", rng)
            write_mask(tmp_path / "Test" / "gt" / group / f"{n}.png", random_mask(rng))
    episodes = load_benchmark("dis5k", tmp_path, shots=2, size=None)
    assert len(episodes) == 7 and episodes.classes == ("DIS-TE1", "DIS-TE2")
    queries = [check_pairing(episode, images, 2, class_of=lambda key: key[0]) for episode in episodes]
    assert sorted(queries) == sorted(images)


# --- errors ---------------------------------------------------------------------------------


def one_line_error(call, *fragments):
    with pytest.raises(BenchmarkError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_argument_errors_are_one_clear_line(tmp_path):
    one_line_error(lambda: load_benchmark("voc", tmp_path), "unknown benchmark 'voc'", "fss, coco")
    one_line_error(lambda: load_benchmark("coco", tmp_path, fold=4), "COCO-20i has no fold 4", "0..3")
    one_line_error(lambda: load_benchmark("fss", tmp_path, fold=1), "FSS-1000 has no fold 1")
    one_line_error(lambda: load_benchmark("lvis", tmp_path / "nowhere"), str(tmp_path / "nowhere"), "lvis_")


def test_missing_files_are_named(tmp_path):
    one_line_error(lambda: load_benchmark("fss", tmp_path), str(tmp_path / "splits" / "test.txt"), "no such file")
    one_line_error(lambda: load_benchmark("coco", tmp_path, fold=2), str(tmp_path / "splits/val/fold2.pkl"))
    one_line_error(lambda: load_benchmark("paco", tmp_path), "paco_part_train.pkl")
    one_line_error(lambda: load_benchmark("pascal_part", tmp_path), pascal_part.INDEX_FILE)
    one_line_error(lambda: load_benchmark("dis5k", tmp_path), str(tmp_path / "Test" / "im"))
    make_fss(tmp_path)
    (tmp_path / "data" / "cat" / "1.jpg").unlink()
    episodes = load_benchmark("fss", tmp_path)
    one_line_error(lambda: episodes[0], str(tmp_path / "data" / "cat" / "1.jpg"), "no such file")


def test_truncated_image_is_named(tmp_path):
    make_fss(tmp_path)
    path = tmp_path / "data" / "dog" / "4.jpg"
    noise = np.random.default_rng(8).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:-100])
    episodes = load_benchmark("fss", tmp_path)
    one_line_error(lambda: episodes[13], str(path), "unreadable image", "truncated")


def test_registry_lists_the_six_benchmarks():
    assert list(BENCHMARKS) == ["fss", "coco", "lvis", "paco", "pascal_part", "dis5k"]
    assert {name for name, benchmark in BENCHMARKS.items() if benchmark.kind == "part"} == {"paco", "pascal_part"}


# --- resizing -------------------------------------------------------------------------------


def test_loaders_resize_to_518_by_default(tmp_path):
    make_fss(tmp_path)
    episode = load_benchmark("fss", tmp_path, shots=2)[3]
    assert episode.query_image.shape == (518, 518, 3) and episode.query_mask.shape == (518, 518)
    assert [m.shape for m in episode.support_masks] == [(518, 518)] * 2


def test_resize_episode_scales_images_bilinear_and_masks_nearest():
    mask = np.array([[True, False], [False, True]])
    image = np.zeros((2, 2, 3), np.uint8)
    episode = Episode((image,), (mask,), image, mask, "x")
    resized = resize_episode(episode, size=4)
    assert resized.query_image.shape == (4, 4, 3)
    assert np.array_equal(resized.support_masks[0], np.kron(mask, np.ones((2, 2), bool)))
    no_truth = resize_episode(Episode((image,), (mask,), image, None, "x"), size=3)
    assert no_truth.query_mask is None and no_truth.support_images[0].shape == (3, 3, 3)
