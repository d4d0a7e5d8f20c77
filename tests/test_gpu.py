"""Real Stable Diffusion 1.5 on a GPU, for maintainers who have one (opt-in: AUTOTUNE_GPU_TESTS=1).

Needs the weights in the local hub cache or `AUTOTUNE_SD15_PATH` pointing at a diffusers folder.
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(os.environ.get("AUTOTUNE_GPU_TESTS") != "1", reason="opt-in: set AUTOTUNE_GPU_TESTS=1"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(scope="module")
def editor():
    from autotune import Editor

    return Editor.from_pretrained(os.environ.get("AUTOTUNE_SD15_PATH", "sd15"), device="cuda", progress=False)


@pytest.fixture(scope="module")
def photo():
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.chelsea()).resize((512, 512))


def test_siminversion_reconstructs_better_than_ddim_at_7_5(editor, photo):
    from autotune import EditParams

    z0 = editor.engine._prepare(photo).latent.float()
    sim, ddim = editor.edit_batch(
        photo, "a cat", "a cat", [EditParams(w_src=0.5, w_tgt=0.5), EditParams(method="ddim")]
    )
    assert (sim.source_latent.float() - z0).norm() < (ddim.source_latent.float() - z0).norm()


def test_batched_edit_on_gpu_matches_single_calls(editor, photo):
    from autotune import EditParams

    cands = [EditParams(w_src=0.5, w_tgt=t, steps=20) for t in (5.0, 7.5)]
    batched = editor.edit_batch(photo, "a cat", "a dog", cands, blend_words=("cat", "dog"))
    for cand, res in zip(cands, batched):
        alone = editor.edit(photo, "a cat", "a dog", cand, blend_words=("cat", "dog"))
        assert (res.pixels - alone.pixels).abs().mean() < 2e-2  # fp16 batched kernels differ slightly


def test_several_tasks_in_one_loop_on_gpu_match_single_tasks(editor, photo):
    from PIL import ImageOps

    from autotune import EditParams
    from autotune.task import EditTask

    tasks = [EditTask("cat", photo, "a cat", "a dog", "change_object", blend_words=("cat", "dog")),
             EditTask("tiger", ImageOps.mirror(photo), "a cat lying down", "a tiger lying down", "change_object",
                      blend_words=("cat", "tiger"))]
    cands = [EditParams(w_src=0.5, w_tgt=t, steps=20) for t in (5.0, 7.5)]
    for task, row in zip(tasks, editor.edit_tasks(tasks, cands)):
        for res, alone in zip(row, editor.edit_task(task, cands)):
            assert (res.pixels - alone.pixels).abs().mean() < 2e-2  # fp16 batched kernels differ slightly
