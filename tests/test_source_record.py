"""Recorded source branches: later edits of the same image, source prompt and source guidance run only their
target branches, and give the edits a live source branch gives."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from autotune import Editor, EditParams, GuidanceSchedule
from autotune.engine.cache import TensorCache
from autotune.engine.unet.source_record import SourceRecord
from tests.conftest import tiny_editor

SRC = "a woman in a space suit"
TARGETS = [("a man in a space suit", ("woman", "man")), ("a cat in a space suit", ("woman", "cat"))]

CANDIDATES = [
    EditParams(w_src=0.5, w_tgt=7.5, steps=6),
    EditParams(w_src=0.5, w_tgt=3.0, steps=6, cross_replace=0.2, reweight=1.0),
    EditParams(w_src=1.0, w_tgt=5.0, steps=6, self_replace=0.0, blend_threshold=0.5),
    EditParams(method="direct", w_src=2.0, steps=6),
    EditParams(method="negative_prompt", steps=6),
    EditParams(method="null_text", w_src=0.5, steps=6, null_text_iterations=2),
    EditParams(w_src=GuidanceSchedule.linear(0.0, 1.0), w_tgt=GuidanceSchedule.interval(7.5, 0.0, 0.5), steps=6),
    EditParams(w_src=0.5, w_tgt=6.0, steps=6, blend_threshold=0.9),  # LocalBlend keeps some of the source latent
    EditParams(w_src=1.0, steps=6, blend_threshold=1.0),  # ... or all of it
]


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((32, 32), Image.LANCZOS)


@pytest.mark.parametrize("mode", ["refine", "replace"])
def test_recorded_source_branches_give_the_live_edits(tiny_model_dir, photo, rows_seen, mode):
    live = tiny_editor(tiny_model_dir, record_sources=False)
    recording = tiny_editor(tiny_model_dir)
    candidates = [c.with_(p2p_mode=mode) for c in CANDIDATES]
    first_target, second_target = TARGETS
    recording.edit_batch(photo, SRC, first_target[0], candidates, blend_words=first_target[1])
    assert rows_seen[-1] == 6 + 9  # six distinct source branches (w_src=0.5 and 1 are shared), nine targets
    records = [v for v in recording.cache._items.values() if isinstance(v, SourceRecord)]
    assert len(records) == 6

    # Another target prompt on the same photo and source prompt: only the target rows run.
    replayed = recording.edit_batch(photo, SRC, second_target[0], candidates, blend_words=second_target[1])
    assert rows_seen[-1] == 9
    reference = live.edit_batch(photo, SRC, second_target[0], candidates, blend_words=second_target[1])
    assert rows_seen[-1] == 6 + 9
    for got, want in zip(replayed, reference, strict=True):
        torch.testing.assert_close(got.latent, want.latent, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.pixels, want.pixels, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.source_latent, want.source_latent, rtol=1e-4, atol=1e-4)
    # Not a stale copy of the first run: the target prompt changed the edits.
    first = live.edit_batch(photo, SRC, first_target[0], candidates[:1], blend_words=first_target[1])[0]
    assert (first.latent - replayed[0].latent).abs().max() > 1e-3


def test_live_and_recorded_source_branches_mix_in_one_batch(tiny_model_dir, photo, rows_seen):
    live = tiny_editor(tiny_model_dir, record_sources=False)
    recording = tiny_editor(tiny_model_dir)
    target, words = TARGETS[0]
    recording.edit_batch(photo, SRC, target, [EditParams(w_src=0.3, steps=6)], blend_words=words)
    mixed = [EditParams(w_src=0.3, w_tgt=4.0, steps=6), EditParams(w_src=0.7, steps=6),
             EditParams(w_src=0.3, w_tgt=9.0, steps=6)]
    got = recording.edit_batch(photo, SRC, target, mixed, blend_words=words)
    assert rows_seen[-1] == 1 + 3  # w_src=0.7 live, w_src=0.3 recorded
    want = live.edit_batch(photo, SRC, target, mixed, blend_words=words)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.latent, b.latent, rtol=1e-4, atol=1e-4)


def test_a_record_without_the_windows_a_run_needs_is_not_used(tiny_model_dir, photo, rows_seen):
    recording = tiny_editor(tiny_model_dir)
    live = tiny_editor(tiny_model_dir, record_sources=False)
    target, words = TARGETS[0]
    narrow = EditParams(w_src=0.5, steps=6, cross_replace=0.2, self_replace=0.2)
    recording.edit_batch(photo, SRC, target, [narrow], blend_words=words)
    wide = narrow.with_(cross_replace=0.8, self_replace=0.8)
    got = recording.edit_batch(photo, SRC, target, [wide], blend_words=words)
    assert rows_seen[-1] == 2  # the record covers 1 step of each window, the run needs 4: run the source live
    torch.testing.assert_close(got[0].latent, live.edit(photo, SRC, target, wide, blend_words=words).latent,
                               rtol=1e-4, atol=1e-4)
    # ... and the wider record it left serves the narrow run too.
    recording.edit_batch(photo, SRC, target, [narrow], blend_words=words)
    assert rows_seen[-1] == 1
    # Without blend words nothing of LocalBlend is needed; with them a record made without must not be used.
    plain = EditParams(w_src=0.9, steps=6)
    recording.edit_batch(photo, SRC, target, [plain])
    recording.edit_batch(photo, SRC, target, [plain], blend_words=words)
    assert rows_seen[-1] == 2


def test_records_of_different_windows_serve_one_run_together(tiny_model_dir, photo, rows_seen):
    # Two records that cover more steps than the run reads, by different amounts (fixed: stacking them failed).
    recording = tiny_editor(tiny_model_dir)
    live = tiny_editor(tiny_model_dir, record_sources=False)
    target, words = TARGETS[0]
    recording.edit_batch(photo, SRC, target, [EditParams(w_src=0.4, steps=6, cross_replace=1.0, self_replace=1.0)],
                         blend_words=words)
    recording.edit_batch(photo, SRC, target, [EditParams(w_src=0.6, steps=6)], blend_words=words)
    both = [EditParams(w_src=0.4, steps=6, cross_replace=0.2, self_replace=0.2),
            EditParams(w_src=0.6, steps=6, cross_replace=0.2, self_replace=0.2)]
    got = recording.edit_batch(photo, SRC, target, both, blend_words=words)
    assert rows_seen[-1] == 2  # both source branches read back
    for a, b in zip(got, live.edit_batch(photo, SRC, target, both, blend_words=words), strict=True):
        torch.testing.assert_close(a.latent, b.latent, rtol=1e-4, atol=1e-4)


def test_records_too_big_for_the_cache_turn_recording_off(tiny_model_dir, photo, rows_seen):
    small = tiny_editor(tiny_model_dir)
    small.cache = TensorCache(max_bytes=64 << 10)  # 64 KiB: a record of this model takes more than a quarter
    target, words = TARGETS[0]
    params = EditParams(w_src=0.5, steps=6)
    small.edit(photo, SRC, target, params, blend_words=words)
    assert small.record_sources is False
    assert not any(isinstance(v, SourceRecord) for v in small.cache._items.values())
    small.edit(photo, SRC, target, params, blend_words=words)
    assert rows_seen[-1] == 2


def test_clearing_the_cache_drops_the_records(tiny_model_dir, photo, rows_seen):
    recording = tiny_editor(tiny_model_dir)
    target, words = TARGETS[0]
    params = EditParams(w_src=0.5, steps=4)
    recording.edit(photo, SRC, target, params, blend_words=words)
    recording.cache.clear()
    recording.edit(photo, SRC, target, params, blend_words=words)
    assert rows_seen == [2, 2]


def test_cache_counts_the_bytes_of_records():
    cache = TensorCache(max_bytes=1000)

    class Blob:
        def __init__(self, nbytes: int) -> None:
            self.nbytes = nbytes

    cache.put("a", Blob(600), persist=False)
    cache.put("b", torch.zeros(50))  # 200 bytes
    assert cache.get("a") is not None
    cache.put("c", Blob(300), persist=False)  # 1,100 bytes: the least recently used ("b") goes
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None


def test_recorded_local_blend_maps_on_the_shapes_model(rows_seen):
    # On the shapes model the blend words' maps are sharp, so LocalBlend's mask depends on what was recorded
    # (on the tiny random model above they are nearly flat).
    from autotune.shapes.tasks import shapes_tasks

    task = shapes_tasks("change_color", count=1)[0]
    live = Editor.from_pretrained("shapes", device="cpu", progress=False, record_sources=False)
    recording = Editor.from_pretrained("shapes", device="cpu", progress=False)
    candidates = [EditParams(w_src=0.4, w_tgt=w, steps=8, blend_threshold=t) for w, t in ((2.0, 0.3), (6.0, 0.6))]
    recording.edit_task(task, candidates[:1])
    got = recording.edit_task(task, candidates)
    assert rows_seen[-1] == 2
    want = live.edit_task(task, candidates)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.latent, b.latent, rtol=1e-4, atol=1e-4)


def test_cache_bounds_are_checked():
    from autotune.errors import InputError

    with pytest.raises(InputError, match="at least 1 item and 0 bytes, got 0 items"):
        TensorCache(max_items=0)
