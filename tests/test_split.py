"""Held-out splits of task files and PIE-Bench folders: a task's digest (its image file's bytes and its prompts)
decides its split, the same on every machine, whatever else is in the set; the shapes world keeps its own."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
from PIL import Image

from autotune.errors import InputError, TaskFileError
from autotune.shapes.tasks import shapes_tasks
from autotune.task import EditTask, task_digest
from autotune.tasks.piebench import encode_mask
from autotune.tasks.sources import load_tasks
from autotune.tasks.split import select_split, split_of

# A 2x1 RGB PPM written byte by byte: its bytes, unlike a PNG encoder's output, cannot change with any library.
PPM = b"P6\n2 1\n255\n" + bytes([255, 0, 0, 0, 0, 255])


def _digest_by_the_documented_recipe(image_bytes: bytes, source: str, target: str) -> str:
    """docs/metrics.md, "Splits": sha256 over the scheme name and, each after a NUL byte, the image file's sha256
    (hex), the source prompt and the target prompt; the first 16 hex digits."""
    h = hashlib.sha256(b"autotune-task-digest-v1")
    for part in (hashlib.sha256(image_bytes).hexdigest(), source, target):
        h.update(b"\0" + part.encode("utf-8"))
    return h.hexdigest()[:16]


def _task_file(folder, n: int, prompt=lambda i: f"photo {i}") -> str:
    """n tasks, each its own small PNG, in a JSONL file."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        lines.append(json.dumps({"id": f"t{i}", "image": f"{i}.png", "source_prompt": prompt(i),
                                 "target_prompt": f"{prompt(i)} in red", "category": "change_color"}))
    (folder / "tasks.jsonl").write_text("\n".join(lines))
    return str(folder / "tasks.jsonl")


def test_a_digest_follows_the_documented_recipe_and_never_changes(tmp_path):
    (tmp_path / "a.ppm").write_bytes(PPM)
    row = {"image": "a.ppm", "source_prompt": "a red dot", "target_prompt": "a blue dot", "category": 6}
    (tmp_path / "t.jsonl").write_text(json.dumps(row))
    (task,) = load_tasks(str(tmp_path / "t.jsonl"), split="all")
    assert task_digest(task) == _digest_by_the_documented_recipe(PPM, "a red dot", "a blue dot")
    # Pinned: a task's split must be the same in every version (a new scheme would need a new name).
    assert task_digest(task) == "397b14c78e18bcb6"


def test_the_split_ignores_names_order_and_the_rest_of_the_set(tmp_path):
    spec = _task_file(tmp_path, 40)
    tasks = load_tasks(spec, split="all")
    splits = {t.id: split_of(t) for t in tasks}
    shuffled = tasks[:]
    random.Random(1).shuffle(shuffled)
    assert {t.id: split_of(t) for t in select_split(shuffled[:13], "all")} == {t.id: splits[t.id] for t in
                                                                            shuffled[:13]}
    renamed = EditTask("other-name", tasks[0].image, tasks[0].source_prompt, tasks[0].target_prompt, "change_object",
                       ("photo", "red"), np.ones((4, 4), bool), metadata=dict(tasks[0].metadata))
    assert task_digest(renamed) == task_digest(tasks[0])  # id, category, blend words, mask do not enter
    reworded = EditTask("t0", tasks[0].image, tasks[0].source_prompt, "a photo in blue", "change_color",
                        metadata=dict(tasks[0].metadata))
    assert task_digest(reworded) != task_digest(tasks[0])


def test_tune_and_heldout_partition_the_set_at_the_fraction_asked(tmp_path):
    spec = _task_file(tmp_path, 400)
    every = [t.id for t in load_tasks(spec, split="all")]
    tune = [t.id for t in load_tasks(spec)]  # the default split is the tuning one
    heldout = [t.id for t in load_tasks(spec, split="heldout")]
    assert sorted(tune + heldout) == sorted(every) and not set(tune) & set(heldout)
    assert [i for i in every if i in set(heldout)] == heldout  # file order kept
    # 400 independent draws at p = 0.3: the share held out lies within 4 standard deviations (0.092).
    assert abs(len(heldout) / 400 - 0.3) < 4 * (0.3 * 0.7 / 400) ** 0.5
    more = [t.id for t in load_tasks(spec, split="heldout", heldout_fraction=0.5)]
    assert set(heldout) < set(more)  # a larger fraction only moves tasks from tune to held out
    assert abs(len(more) / 400 - 0.5) < 4 * (0.25 / 400) ** 0.5


def test_the_same_photo_and_prompts_fall_alike_in_a_task_file_and_a_piebench_folder(tmp_path):
    from tests.test_piebench_loader import build_piebench

    build_piebench(tmp_path / "pie")
    pie = load_tasks(str(tmp_path / "pie"), split="all")
    rows = [{"id": f"f{i}", "image": str(tmp_path / "pie" / "annotation_images" / t.metadata["image_path"]),
             "source_prompt": t.source_prompt, "target_prompt": t.target_prompt, "category": t.category,
             "mask": encode_mask(t.mask)} for i, t in enumerate(pie)]
    (tmp_path / "same.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    from_file = load_tasks(str(tmp_path / "same.jsonl"), split="all")
    assert [task_digest(t) for t in from_file] == [task_digest(t) for t in pie]
    assert [split_of(t, 0.5) for t in from_file] == [split_of(t, 0.5) for t in pie]


def test_a_re_encoded_image_is_another_task_but_a_moved_one_is_not(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    photo = Image.fromarray(np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    photo.save(tmp_path / "a" / "x.png", compress_level=1)
    (tmp_path / "b" / "y.png").write_bytes((tmp_path / "a" / "x.png").read_bytes())  # moved and renamed
    photo.save(tmp_path / "b" / "z.png", compress_level=9)  # same pixels, other bytes
    row = {"source_prompt": "a", "target_prompt": "b", "category": 6}
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({**row, "id": i, "image": path}) for i, path in
                                                (("x", "a/x.png"), ("y", "b/y.png"), ("z", "b/z.png"))))
    x, y, z = load_tasks(str(tmp_path / "t.jsonl"), split="all")
    assert task_digest(x) == task_digest(y) != task_digest(z)
    assert np.array_equal(np.asarray(x.image), np.asarray(z.image))


def test_an_empty_split_and_a_bad_fraction_say_what_to_do(tmp_path):
    spec = _task_file(tmp_path, 3)
    with pytest.raises(TaskFileError, match=r"none of its 3 task\(s\) falls in the heldout split .*--split all"):
        load_tasks(spec, split="heldout", heldout_fraction=1e-12)  # a digest below 2^64 x 1e-12: odds 1e-11
    with pytest.raises(TaskFileError, match=r"falls in the tune split \(3 held out"):
        load_tasks(spec, split="tune", heldout_fraction=1 - 1e-12)
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(InputError, match="between 0 and 1"):
            load_tasks(spec, heldout_fraction=bad)
    with pytest.raises(InputError, match="unknown split 'test'"):
        load_tasks(spec, split="test")
    with pytest.raises(InputError, match="one scene in five"):
        load_tasks("shapes:change_color", heldout_fraction=0.3)


def test_shapes_all_is_both_splits_with_their_own_ids_and_tasks():
    every = shapes_tasks("delete_object", "all", count=25)
    tune = {t.id: t for t in shapes_tasks("delete_object", "tune", count=25)}
    heldout = {t.id: t for t in shapes_tasks("delete_object", "heldout", count=25)}
    assert {t.metadata["split"] for t in every} == {"tune", "heldout"}
    for task in every:
        same = (tune if task.metadata["split"] == "tune" else heldout)[task.id]
        assert (task.source_prompt, task.target_prompt) == (same.source_prompt, same.target_prompt)
        assert np.array_equal(np.asarray(task.image), np.asarray(same.image))
    assert [t.id for t in load_tasks("shapes:delete_object:25", split="all")] == [t.id for t in every]


def test_the_shapes_tasks_command_writes_either_split_or_both(tmp_path, capsys):
    import json

    from autotune.cli import main
    from autotune.shapes.tasks import shapes_tasks

    assert main(["shapes", "tasks", "change_color", "--split", "all", "--count", "20", "--out", str(tmp_path)]) == 0
    written = [(e["id"], e["source_prompt"]) for e in json.loads((tmp_path / "tasks.json").read_text())]
    own = {t.id: t.source_prompt for split in ("tune", "heldout") for t in shapes_tasks("change_color", split, 20)}
    assert len(written) == 20 and all(own[i] == prompt for i, prompt in written)  # each as in its own split
    assert sum("-heldout-" in i for i, _ in written) == 2  # one scene in five, give or take: 2 of the first 20
    assert "(all split)" in capsys.readouterr().out
