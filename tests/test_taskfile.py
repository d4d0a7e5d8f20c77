"""JSONL and CSV task files, and `load_tasks` dispatch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from autotune.errors import TaskFileError
from autotune.tasks.piebench import encode_mask
from autotune.tasks.sources import load_tasks
from autotune.tasks.taskfile import load_task_file


@pytest.fixture
def photos(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(data.coffee()).save(tmp_path / "img" / "coffee.png")
    Image.fromarray(data.chelsea()).save(tmp_path / "img" / "cat.jpg")
    mask = np.zeros((300, 451), dtype=np.uint8)
    mask[50:150, 100:300] = 255
    Image.fromarray(mask).save(tmp_path / "img" / "cat_mask.png")
    return tmp_path


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return path


GOOD = [
    {
        "id": "cup",
        "image": "img/coffee.png",
        "source_prompt": "a cup of coffee",
        "target_prompt": "a cup of tea",
        "category": "change_object",
        "blend_words": ["coffee", "tea"],
        "metadata": {"owner": "ann"},
    },
    {
        "image": "img/cat.jpg",
        "source_prompt": "a cat",
        "target_prompt": "a tiger",
        "category": 1,
        "blend_words": "cat tiger",
        "mask": "img/cat_mask.png",
    },
]


def test_jsonl_round_trip(photos):
    tasks = load_task_file(_jsonl(photos / "tasks.jsonl", GOOD))
    assert [t.id for t in tasks] == ["cup", "tasks-2"]
    assert tasks[0].blend_words == ("coffee", "tea") and tasks[0].mask is None
    assert tasks[0].metadata["owner"] == "ann" and tasks[0].image.size == (600, 400)
    assert tasks[1].category == "change_object" and tasks[1].blend_words == ("cat", "tiger")
    assert tasks[1].mask.shape == (300, 451) and tasks[1].mask.sum() == 100 * 200
    assert load_tasks(str(photos / "tasks.jsonl"), split="all")[1].id == "tasks-2"


def test_jsonl_mask_as_run_length(photos):
    mask = np.zeros((300, 451), dtype=bool)
    mask[10:20, 30:40] = True
    row = dict(GOOD[1], mask=encode_mask(mask))
    task = load_task_file(_jsonl(photos / "t.jsonl", [row]))[0]
    assert task.mask.tolist() == mask.tolist()  # no forced border in task files


def test_csv(photos):
    (photos / "tasks.csv").write_text(
        "id,image,source_prompt,target_prompt,category,blend_words,mask\n"
        "cup,img/coffee.png,a cup of coffee,a cup of tea,change_object,coffee tea,\n"
        "cat,img/cat.jpg,a cat,a cat in red,6,,img/cat_mask.png\n"
    )
    tasks = load_task_file(photos / "tasks.csv")
    assert [(t.id, t.category, t.blend_words) for t in tasks] == [
        ("cup", "change_object", ("coffee", "tea")),
        ("cat", "change_color", None),
    ]
    assert tasks[1].mask.sum() == 100 * 200
    assert [t.id for t in load_tasks(str(photos / "tasks.csv"), category="change_color", split="all")] == ["cat"]


@pytest.mark.parametrize(
    "change,pattern",
    [
        ({"image": "img/nope.png"}, r"line 1 \(task 'cup'\), field 'image': no image"),
        ({"category": "recolour"}, r"field 'category': unknown edit category"),
        ({"target_prompt": ""}, r"field 'target_prompt': missing"),
        ({"blend_words": ["a", "b", "c"]}, r"field 'blend_words': expected two words"),
        ({"mask": "img/cat_mask.png"}, r"field 'mask': mask is 451x300 but the image is 600x400"),
        ({"prompt": "x"}, r"unknown field\(s\) prompt"),
        ({"metadata": [1]}, r"field 'metadata': expected an object"),
    ],
)
def test_jsonl_errors_name_file_line_and_field(photos, change, pattern):
    path = _jsonl(photos / "bad.jsonl", [dict(GOOD[0], **change)])
    with pytest.raises(TaskFileError, match=pattern) as info:
        load_task_file(path)
    assert "bad.jsonl, line 1 (task 'cup')" in str(info.value)


def test_file_level_errors(photos):
    (photos / "broken.jsonl").write_text('{"id": 1}\n{not json\n')
    with pytest.raises(TaskFileError, match=r"broken\.jsonl, line 2: not valid JSON"):
        load_task_file(photos / "broken.jsonl")
    path = _jsonl(photos / "dup.jsonl", [GOOD[0], GOOD[0]])
    with pytest.raises(TaskFileError, match=r"line 2, field 'id': 'cup' already used on line 1"):
        load_task_file(path)
    (photos / "bad.csv").write_text("id,image,colour\n")
    with pytest.raises(TaskFileError, match=r"bad\.csv, line 1: unknown column\(s\) colour"):
        load_task_file(photos / "bad.csv")
    with pytest.raises(TaskFileError, match="unknown task file type"):
        load_task_file(photos / "img" / "cat.jpg")


def test_load_tasks_dispatch_errors(photos):
    with pytest.raises(TaskFileError, match="no such file or directory"):
        load_tasks(str(photos / "missing.jsonl2"))
    with pytest.raises(TaskFileError, match="PIE-Bench directory"):
        load_tasks(str(photos / "img"))
    with pytest.raises(TaskFileError, match="shapes tasks need a category"):
        load_tasks("shapes")
    with pytest.raises(TaskFileError, match="--category"):
        load_tasks(str(photos), category="paint")


def test_shapes_source_delegates_to_the_world():
    pytest.importorskip("autotune.shapes.tasks")
    from autotune.shapes.tasks import SHAPES_CATEGORIES

    category = sorted(SHAPES_CATEGORIES)[0]
    tasks = load_tasks(f"shapes:{category}", split="tune")
    assert tasks and all(t.category == category for t in tasks)


def test_shapes_source_takes_a_task_count():
    pytest.importorskip("autotune.shapes.tasks")
    default = load_tasks("shapes:add_object")
    more = load_tasks("shapes:add_object:24", split="tune")
    assert len(default) == 20 and len(more) == 24
    assert [t.id for t in more[:20]] == [t.id for t in default]  # a longer list extends the default one
    assert len(load_tasks("shapes::3", category="add_object")) == 3
    for bad in ("shapes:add_object:0", "shapes:add_object:many", "shapes:add_object:-5"):
        with pytest.raises(TaskFileError, match="whole number >= 1, as in shapes:add_object:60"):
            load_tasks(bad)
