"""PIE-Bench loader on a small PIE-Bench-format directory built from real photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from autotune.errors import TaskFileError
from autotune.tasks.piebench import decode_mask, encode_mask, load_piebench, strip_brackets
from autotune.tasks.sources import load_tasks


def _rle_by_loop(rle, shape):
    """PIE-Bench's decoding, written as its plain loop, for comparison."""
    length = shape[0] * shape[1]
    flat = np.zeros(length)
    for i in range(0, len(rle), 2):
        for j in range(min(rle[i + 1], length - rle[i])):
            flat[rle[i] + j] = 1
    mask = flat.reshape(shape)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 1
    return mask.astype(bool)


def build_piebench(root, photos=None):
    """A 3-image PIE-Bench directory: astronaut (colour), coffee (object), chelsea (background)."""
    photos = photos or {
        "000000000001": ("6_change_attribute_color_40/1_artificial/1_animal/000000000001.jpg", data.astronaut(), "6"),
        "111000000002": ("1_change_object_80/1_artificial/1_animal/111000000002.jpg", data.coffee(), "1"),
        "822000000003": ("8_change_background_80/2_natural/1_animal/822000000003.jpg", data.chelsea(), "8"),
    }
    mapping = {}
    for key, (rel, photo, type_id) in photos.items():
        image = Image.fromarray(photo).resize((512, 512), Image.BICUBIC)
        path = root / "annotation_images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=95)
        mask = np.zeros((512, 512), dtype=bool)
        mask[100:200, 150:300] = True
        mapping[key] = {
            "image_path": rel,
            "original_prompt": "a photo of a [cat] sitting",
            "editing_prompt": "a photo of a [dog] sitting",
            "editing_instruction": "Change the cat to a dog",
            "editing_type_id": type_id,
            "blended_word": "cat dog",
            "mask": encode_mask(mask),
        }
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return mapping


def test_decode_matches_piebench_loop_including_overflow_and_border():
    rng = np.random.default_rng(0)
    shape = (23, 31)
    starts = np.sort(rng.choice(23 * 31, 10, replace=False))
    rle = [int(v) for s in starts for v in (s, int(rng.integers(1, 40)))]
    rle += [23 * 31 - 3, 10]  # a run past the end is cut
    np.testing.assert_array_equal(decode_mask(rle, shape), _rle_by_loop(rle, shape))
    inner = decode_mask(rle, shape, border=False)
    assert not inner[0, 0] and decode_mask([], shape)[0, 0]
    assert decode_mask(encode_mask(inner), shape, border=False).tolist() == inner.tolist()
    with pytest.raises(ValueError, match="odd"):
        decode_mask([1, 2, 3], shape)


def test_strip_brackets():
    assert strip_brackets("a [red] car on a [wet] road") == "a red car on a wet road"


def test_loads_real_photos_with_prompts_masks_and_categories(tmp_path):
    build_piebench(tmp_path)
    tasks = load_piebench(tmp_path)
    assert [t.id for t in tasks] == ["000000000001", "111000000002", "822000000003"]
    assert [t.category for t in tasks] == ["change_color", "change_object", "change_background"]
    task = tasks[0]
    assert task.image.size == (512, 512) and task.image.mode == "RGB"
    assert task.source_prompt == "a photo of a cat sitting" and task.target_prompt == "a photo of a dog sitting"
    assert task.blend_words == ("cat", "dog")
    assert task.mask.shape == (512, 512) and task.mask[150, 200] and not task.mask[300, 300]
    assert task.mask[0].all() and task.mask[:, -1].all()  # the forced border
    assert task.mask.sum() == 100 * 150 + 4 * 511
    assert task.metadata["editing_instruction"] == "Change the cat to a dog"


@pytest.mark.parametrize("category", [6, "6", "change_color", "change colour"])
def test_category_by_id_or_name(tmp_path, category):
    build_piebench(tmp_path)
    assert [t.id for t in load_piebench(tmp_path, category)] == ["000000000001"]
    assert [t.id for t in load_tasks(str(tmp_path), "change_color", split="all")] == ["000000000001"]


def test_errors_name_file_entry_and_field(tmp_path):
    mapping = build_piebench(tmp_path)
    mapping["111000000002"]["editing_type_id"] = "12"
    (tmp_path / "mapping_file.json").write_text(json.dumps(mapping))
    with pytest.raises(TaskFileError, match=r"mapping_file\.json, entry '111000000002', field 'editing_type_id'"):
        load_piebench(tmp_path)
    mapping["111000000002"]["editing_type_id"] = "1"
    mapping["111000000002"]["image_path"] = "missing.jpg"
    (tmp_path / "mapping_file.json").write_text(json.dumps(mapping))
    with pytest.raises(TaskFileError, match=r"entry '111000000002', field 'image_path': no image"):
        load_piebench(tmp_path)
    del mapping["111000000002"]["mask"]
    (tmp_path / "mapping_file.json").write_text(json.dumps(mapping))
    with pytest.raises(TaskFileError, match="missing field.*mask"):
        load_piebench(tmp_path)
    with pytest.raises(TaskFileError, match="no mapping_file.json"):
        load_piebench(tmp_path / "annotation_images")
