"""Several tasks in one batch (`Editor.edit_tasks`): each task's edits equal its own `edit_task`, whatever the
other tasks' images, prompts, token alignments and blend words."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageOps

from autotune import Editor, EditParams
from autotune.errors import InputError
from autotune.task import EditTask
from tests.conftest import tiny_editor
from tests.test_source_record import CANDIDATES as RECORD_CANDIDATES

SRC = "a woman in a space suit"

CANDIDATES = [c.with_(steps=5) for c in RECORD_CANDIDATES]  # all five methods, schedules, blend settings
SOURCE_GROUPS = 6  # distinct (method, inversion and source guidance) among CANDIDATES


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    from skimage import data

    astronaut = Image.fromarray(data.astronaut()).resize((32, 32), Image.LANCZOS)
    coffee = Image.fromarray(data.coffee()).resize((32, 32), Image.LANCZOS)
    return [astronaut, ImageOps.mirror(astronaut), coffee]


def _tasks(photos: list[Image.Image], mode: str) -> list[EditTask]:
    # Different images, source prompts, token alignments (refine: an inserted word) and blend words, and one task
    # without blend words.
    second = "a smiling woman in a bright white space suit" if mode == "refine" else "a woman in a black space suit"
    return [
        EditTask("t0", photos[0], SRC, "a cat in a space suit", "change_object", blend_words=("woman", "cat")),
        EditTask("t1", photos[1], "a woman in a white space suit", second, "change_object",
                 blend_words=("woman", "woman")),
        EditTask("t2", photos[2], "a cup of coffee on a table", "a cup of tea on a table", "change_object"),
    ]


def _assert_same(got, want) -> None:
    for a, b in zip(got, want, strict=True):
        assert a.params == b.params
        torch.testing.assert_close(a.latent, b.latent, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a.pixels, b.pixels, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a.source_latent, b.source_latent, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["refine", "replace"])
def test_tasks_batched_together_give_their_own_edits(tiny_model_dir, photos, rows_seen, mode):
    candidates = [c.with_(p2p_mode=mode) for c in CANDIDATES]
    tasks = _tasks(photos, mode)
    together = tiny_editor(tiny_model_dir, max_batch=64, record_sources=False).edit_tasks(tasks, candidates)
    assert rows_seen == [len(tasks) * (SOURCE_GROUPS + len(candidates))]  # one denoising run for all of it
    alone = tiny_editor(tiny_model_dir, record_sources=False)
    for task, got in zip(tasks, together, strict=True):
        _assert_same(got, alone.edit_task(task, candidates))
    # The tasks differ: a run that mixed up their rows would not give each its own edit.
    assert (together[0][0].pixels - together[1][0].pixels).abs().max() > 1e-2


def test_recorded_and_live_source_branches_of_several_tasks_mix(tiny_model_dir, photos, rows_seen):
    tasks = _tasks(photos, "refine")
    recording = tiny_editor(tiny_model_dir, max_batch=64)
    recording.edit_tasks(tasks[:2], CANDIDATES[:1])  # records the first two tasks' w_src=0.5 source branches
    rows_seen.clear()
    got = recording.edit_tasks(tasks, CANDIDATES[:3])
    # live: tasks 0 and 1 at w_src=1.0, task 2 at 0.5 and 1.0; recorded: tasks 0 and 1 at 0.5
    assert rows_seen == [4 + 3 * 3]
    live = tiny_editor(tiny_model_dir, record_sources=False)
    for task, row in zip(tasks, got, strict=True):
        _assert_same(row, live.edit_task(task, CANDIDATES[:3]))


def test_tasks_are_split_by_max_batch_and_image_size(tiny_model_dir, photos, rows_seen):
    tasks = _tasks(photos, "refine")
    wide = EditTask("wide", photos[2].resize((48, 32)), "a cup of coffee", "a cup of tea", "change_object")
    candidates = [EditParams(w_src=0.5, w_tgt=w, steps=4) for w in (3.0, 7.5)]
    editor = tiny_editor(tiny_model_dir, max_batch=4, record_sources=False)
    got = editor.edit_tasks([tasks[0], wide, tasks[1], tasks[2]], candidates)
    # at most 4 target branches per run: two 32x32 tasks, then the third, then the 48x32 one on its own
    assert rows_seen == [2 + 4, 1 + 2, 1 + 2]
    assert got[1][0].pixels.shape[-2:] == (20, 32)  # fitted to the model: 32 px on the long side
    alone = tiny_editor(tiny_model_dir, record_sources=False)
    for task, row in zip([tasks[0], wide, tasks[1], tasks[2]], got, strict=True):
        _assert_same(row, alone.edit_task(task, candidates))


def test_edit_tasks_checks_its_inputs(tiny_model_dir, photos):
    from autotune.errors import InputError

    editor = tiny_editor(tiny_model_dir)
    bad = EditTask("bad", photos[0], SRC, "a cat in a space suit", "change_object", blend_words=("woman", "dog"))
    with pytest.raises(InputError, match="dog"):
        editor.edit_tasks([bad], CANDIDATES[:1])
    with pytest.raises(InputError, match="candidate 0 is a dict"):
        editor.edit_tasks(_tasks(photos, "refine")[:1], [{"w_src": 0.5}])
    assert editor.edit_tasks(_tasks(photos, "refine"), []) == [[], [], []]


def test_local_blend_of_several_tasks_on_the_shapes_model(rows_seen):
    # The shapes model's blend-word maps are sharp, so each task's mask depends on its own words; the three
    # categories put them at different token positions (and add_object's prompts do not align one to one). At
    # these thresholds the mask does not cover the whole 8x8 latent (at 0.3 it does on this model).
    from autotune.shapes.tasks import shapes_tasks

    tasks = [shapes_tasks(c, count=1)[0] for c in ("add_object", "change_color", "delete_object")]
    candidates = [EditParams(w_src=0.4, w_tgt=w, steps=8, blend_threshold=t) for w, t in ((2.0, 0.8), (6.0, 0.9))]
    together = Editor.from_pretrained("shapes", device="cpu", progress=False, record_sources=False)
    got = together.edit_tasks(tasks, candidates)
    assert rows_seen == [3 * (1 + 2)]
    alone = Editor.from_pretrained("shapes", device="cpu", progress=False, record_sources=False)
    for task, row in zip(tasks, got, strict=True):
        _assert_same(row, alone.edit_task(task, candidates))
    unblended = alone.edit_tasks(tasks, [c.with_(blend_threshold=1.0, blend_start=1.0) for c in candidates])
    assert max((a.latent - b.latent).abs().max() for ra, rb in zip(got, unblended) for a, b in zip(ra, rb)) > 1e-2


def test_inverting_tasks_ahead_is_one_loop_and_changes_no_edit(tiny_model_dir, photos):
    from autotune.engine.unet.source_record import SourceRecord

    tasks = _tasks(photos, "refine")
    candidates = [EditParams(w_src=w, w_tgt=g, steps=5) for w, g in ((0.5, 7.5), (0.8, 7.5), (0.5, 3.0))]
    ahead = tiny_editor(tiny_model_dir, max_batch=64)
    rows: list[int] = []
    ahead.components.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    assert ahead.invert_tasks(tasks, candidates) == 6  # 3 tasks x 2 distinct w_src
    assert rows == [2 * 6] * 5  # one 5-step loop: the unconditional and conditional rows of all six
    rows.clear()
    assert ahead.invert_tasks(tasks, candidates) == 0 and rows == []
    got = ahead.edit_tasks(tasks, candidates)
    assert rows == [2 * (6 + 9)] * 5  # the edit loop alone: 6 source and 9 target branches, nothing inverted
    for row, want in zip(got, tiny_editor(tiny_model_dir, max_batch=64).edit_tasks(tasks, candidates), strict=True):
        _assert_same(row, want)
    # A task whose source branch is recorded needs no inversion, even once its inversion left the cache.
    for key in [k for k, v in ahead.cache._items.items() if not isinstance(v, SourceRecord)]:
        ahead.cache._items.pop(key)
    rows.clear()
    assert ahead.invert_tasks(tasks, candidates) == 0 and rows == []
    with pytest.raises(InputError, match="pass EditParams objects"):
        ahead.invert_tasks(tasks, [{"w_src": 0.5}])
    # No more rows than the largest edit loop: at most 2 * max_batch inversions per loop.
    small = tiny_editor(tiny_model_dir, max_batch=2)
    rows.clear()
    small.components.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    assert small.invert_tasks(tasks, candidates) == 6 and rows == [2 * 4] * 5 + [2 * 2] * 5
