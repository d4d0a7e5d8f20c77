"""Loading checkpoints: folders, single files, hub ids offline, and the errors when they are missing."""

from __future__ import annotations

import time

import pytest
import torch

from autotune import Editor
from autotune.engine.checkpoint import SHORT_NAMES, locate
from autotune.engine.unet.loading import make_scheduler
from autotune.errors import ModelNotFoundError


def test_local_folder_loads_with_its_scheduler(tiny_model_dir):
    editor = Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False)
    info = editor.model_info()
    assert info["source"] == "folder" and info["scheduler"]["prediction_type"] == "epsilon"
    assert info["scheduler"]["steps_offset"] == 1 and info["scheduler"]["clip_sample"] is False
    assert len(info["weights"]) == 16


def test_piebench_scheduler_mode_keeps_the_prediction_type(tiny_vpred_model_dir):
    editor = Editor.from_pretrained(str(tiny_vpred_model_dir), device="cpu", scheduler="piebench", progress=False)
    cfg = editor.components.scheduler.config
    assert cfg.prediction_type == "v_prediction" and cfg.beta_end == 0.012 and cfg.steps_offset == 0
    with pytest.raises(ValueError, match="unknown scheduler mode"):
        make_scheduler({}, "karras")


def test_dtype_is_a_parameter(tiny_model_dir):
    editor = Editor.from_pretrained(str(tiny_model_dir), device="cpu", dtype=torch.bfloat16, progress=False)
    assert editor.components.unet.dtype == torch.bfloat16


def test_missing_hub_model_fails_at_once_and_says_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        Editor.from_pretrained("no-such-org/no-such-model", device="cpu")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "local folder" in message and "hub id 'no-such-org/no-such-model'" in message and "--model PATH" in message


def test_a_folder_that_is_not_a_pipeline_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        Editor.from_pretrained(str(tmp_path), device="cpu")


def test_pickle_checkpoints_are_refused_by_default(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really")
    with pytest.raises(ModelNotFoundError, match="can run code"):
        Editor.from_pretrained(str(ckpt), device="cpu")


def test_single_safetensors_file_offline_without_config_explains_the_fix(tiny_model_dir):
    unet_file = next((tiny_model_dir / "unet").glob("*.safetensors"))
    with pytest.raises(ModelNotFoundError, match="--config"):
        Editor.from_pretrained(str(unet_file), device="cpu")


def test_cuda_request_without_cuda_is_a_clear_error(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelNotFoundError, match="CUDA is not available"):
        Editor.from_pretrained(str(tiny_model_dir), device="cuda")


def test_short_names_resolve(monkeypatch):
    import json

    # `shapes` is the pipeline folder shipped inside the package, found wherever autotune is installed.
    shapes = locate("shapes")
    assert shapes.kind == "folder" and shapes.pipeline_class == "StableDiffusionPipeline"
    index = json.loads((shapes.path / "model_index.json").read_text())
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    assert locate(str(shapes.path)).path == shapes.path
    # A hub short name is looked up as the hub id README documents, and the error says so.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        locate("sd15")
    message = str(info.value)
    assert "short name 'sd15' -> stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "hub id 'stable-diffusion-v1-5/stable-diffusion-v1-5'" in message
    with pytest.raises(ModelNotFoundError) as info:
        locate("sd99")  # not a short name: taken as a hub id as it is
    assert "short name" not in str(info.value) and "hub id 'sd99'" in str(info.value)
    assert set(SHORT_NAMES) >= {"shapes", "sd15", "sd14", "sd21", "sd21-base"}  # README's list
    assert SHORT_NAMES["shapes-flow"].endswith("shapes/weights/shapes-flow")


def test_a_missing_shapes_flow_model_says_how_to_train_it(tmp_path, monkeypatch):
    from autotune.engine import checkpoint

    absent = tmp_path / "shapes-flow"
    monkeypatch.setattr(checkpoint, "SHAPES_FLOW_MODEL_DIR", absent)
    monkeypatch.setitem(checkpoint.SHORT_NAMES, "shapes-flow", str(absent))
    with pytest.raises(ModelNotFoundError, match="autotune shapes train-flow --out .*shapes-flow"):
        checkpoint.locate("shapes-flow")


def test_weights_fingerprint_changes_with_the_values_not_only_the_shapes(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    from autotune.engine import checkpoint as models

    def fingerprint_of(values: torch.Tensor) -> str:
        folder = tmp_path / "m"
        folder.mkdir(exist_ok=True)
        save_file({"w": values}, str(folder / "model.safetensors"))
        return models.weights_fingerprint(folder)

    base = torch.zeros(64 * 1024)
    retrained = base.clone()
    retrained[40_000] = 1.0  # same names, shapes and header: only one value differs
    assert fingerprint_of(base) == fingerprint_of(base.clone())
    assert fingerprint_of(base) != fingerprint_of(retrained)
    # Large files are sampled: a change everywhere (retraining) is still seen.
    monkeypatch.setattr(models, "FINGERPRINT_FULL_BYTES", 1024)
    monkeypatch.setattr(models, "FINGERPRINT_BLOCKS", 8)
    monkeypatch.setattr(models, "FINGERPRINT_BLOCK", 256)
    assert fingerprint_of(base) != fingerprint_of(base + 1e-3)
