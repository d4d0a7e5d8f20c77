"""PieBenchScorer: all seven metrics for K candidates in one pass, on tiny random DINO / CLIP / SqueezeNet models."""

from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import timm
import torch
import torchvision
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from PIL import Image
from safetensors.torch import save_file
from skimage import data

from autotune.errors import WeightsNotFoundError
from autotune.params import EditParams
from autotune.scoring import ALL_METRICS, PieBenchScorer, Scorer
from autotune.scoring.clip import ClipScore
from autotune.scoring.lpips_weights import load_lpips
from autotune.scoring.structure import DINO_MODEL, StructureDistance
from autotune.task import EditTask


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    torch.manual_seed(0)
    vit = timm.create_model(
        DINO_MODEL,
        pretrained=False,
        num_classes=0,
        dynamic_img_size=True,
        img_size=32,
        embed_dim=48,
        depth=2,
        num_heads=3,
    )
    clip = CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(width=32, heads=2, layers=1),
    )
    features = {
        k: v
        for k, v in torchvision.models.squeezenet1_1(weights=None).state_dict().items()
        if k.startswith("features.")
    }
    path = tmp_path_factory.mktemp("w") / "squeeze.safetensors"
    save_file(features, str(path))
    return vit.eval(), ClipScore(clip.eval(), open_clip.get_tokenizer("ViT-L-14")), load_lpips("squeeze", path)


def _scorer(parts, mode="piebench", **kw):
    vit, clip, lpips = parts
    structure = StructureDistance(vit, pixel_scale=255.0 if mode == "piebench" else 1.0, short_side=32, max_long=64)
    return PieBenchScorer(mode=mode, device="cpu", structure=structure, clip=clip, lpips=lpips, **kw)


def _task(size=(96, 128)) -> EditTask:
    image = Image.fromarray(data.coffee()).resize(size[::-1], Image.BICUBIC)
    mask = np.zeros(size, dtype=bool)
    mask[20:60, 30:90] = True
    return EditTask("t1", image, "a cup of coffee", "a cup of tea", "change_object", ("coffee", "tea"), mask)


def _source(task) -> torch.Tensor:
    return torch.from_numpy(np.asarray(task.image, dtype=np.float32) / 255).permute(2, 0, 1)


def test_scores_k_candidates_in_one_pass_with_every_metric(parts):
    scorer = _scorer(parts)
    assert isinstance(scorer, Scorer)
    task = _task()
    src = _source(task)
    edited = torch.stack([src, (src + 0.1 * torch.randn_like(src)).clamp(0, 1), src.flip(-1)])
    rows = scorer.score(task, edited)
    assert len(rows) == 3 and all(set(r) == set(ALL_METRICS) for r in rows)
    assert rows[0]["structure_distance"] == 0.0 and rows[0]["mse"] == 0.0 and math.isinf(rows[0]["psnr"])
    assert rows[0]["lpips"] == pytest.approx(0.0, abs=1e-6) and rows[0]["ssim"] == pytest.approx(1.0)
    assert rows[1]["mse"] > 0 and rows[2]["structure_distance"] > 0
    one_by_one = [scorer.score(task, edited[i : i + 1])[0] for i in range(3)]
    for batch_row, single in zip(rows, one_by_one):
        for name in ALL_METRICS:
            assert batch_row[name] == pytest.approx(single[name], rel=1e-4, abs=1e-6), name
    assert scorer.metrics()["psnr"] == "maximize" and scorer.metrics()["lpips"] == "minimize"


def test_edits_at_another_resolution_are_scored_against_a_resized_source(parts):
    scorer = _scorer(parts)
    task = _task((96, 128))
    small = torch.nn.functional.interpolate(_source(task)[None], size=(48, 64), mode="bicubic", antialias=True).clamp(
        0, 1
    )
    row = scorer.score(task, small)[0]
    assert row["psnr"] > 40  # the same picture: only 8-bit rounding separates them
    assert row["structure_distance"] < 1e-3


def test_modes_differ_where_piebench_says_they_should(parts):
    task = _task()
    src = _source(task)
    edited = src.clone()
    edited[:, 20:60, 30:90] = 1.0  # change only the edit region
    pie = _scorer(parts, "piebench").score(task, edited[None])[0]
    masked = _scorer(parts, "masked").score(task, edited[None])[0]
    assert masked["mse"] == 0.0 and pie["mse"] == 0.0  # identical outside the region, however it is counted
    assert not math.isnan(pie["clip_edited"])
    edited = src.clone()
    edited[:, 0, :] = 1.0  # change only the top row: PIE-Bench's forced border hides it, the clean mode does not
    pie = _scorer(parts, "piebench").score(task, edited[None])[0]
    masked = _scorer(parts, "masked").score(task, edited[None])[0]
    assert pie["mse"] == 0.0 and masked["mse"] > 0


def test_subset_of_metrics_and_describe(parts):
    scorer = _scorer(parts, metrics=("psnr", "ssim"))
    row = scorer.score(_task(), _source(_task())[None])[0]
    assert set(row) == {"psnr", "ssim"}
    info = _scorer(parts).describe()
    assert info["mode"] == "piebench" and info["backbones"]["clip"] == "custom"
    assert any("zero" in q for q in info["quirks"]) and info["versions"]["torch"]
    with pytest.raises(ValueError, match="unknown metric"):
        PieBenchScorer(metrics=("fid",))


def test_summary_columns_read_back_to_independently_computed_metrics(tmp_path):
    """What a reader of summary.csv gets: each column divided by the factor its header names is the metric itself,
    as scikit-image computes it, and PSNR and MSE agree through PSNR's definition. The headers are PIE-Bench's
    Table 1 (Ju et al. 2024): PSNR unscaled, MSE x10^4, SSIM x10^2."""
    import csv
    import re

    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

    from autotune.evaluation.evaluate import evaluate

    photo = Image.fromarray(data.astronaut()).resize((128, 128), Image.BICUBIC)
    source = np.asarray(photo, dtype=np.float32) / 255
    noisy = np.clip(source + np.random.default_rng(0).normal(0, 0.05, source.shape), 0, 1).astype(np.float32)

    class NoisyEditor:
        def model_info(self):
            return {"id": "noisy"}

        def edit_task(self, task, candidates):
            result = type("R", (), {"pixels": torch.from_numpy(noisy).permute(2, 0, 1), "params": candidates[0]})
            result.image = Image.fromarray((noisy * 255).round().astype(np.uint8))
            return [result]

    task = EditTask("astro", photo, "a woman", "a robot", "change_object")
    scorer = PieBenchScorer(mode="masked", device="cpu", metrics=("psnr", "mse", "ssim"))
    evaluate(NoisyEditor(), [task], EditParams(), scorer, tmp_path, progress=False)
    (row,) = [r for r in csv.DictReader(open(tmp_path / "summary.csv")) if r["category"] == "change_object"]
    columns = {name: float(value) for name, value in row.items() if name not in ("category", "n")}
    assert set(columns) == {"PSNR", "MSE x10^4", "SSIM x10^2"}

    def raw(column: str) -> float:
        power = re.search(r"x10\^(\d+)$", column)
        return columns[column] / 10 ** int(power.group(1)) if power else columns[column]

    mse = mean_squared_error(source, noisy)
    assert raw("MSE x10^4") == pytest.approx(mse, abs=0.006e-4)  # the column keeps 2 decimals
    assert raw("PSNR") == pytest.approx(10 * np.log10(1 / raw("MSE x10^4")), abs=0.01)
    assert raw("PSNR") == pytest.approx(peak_signal_noise_ratio(source, noisy, data_range=1.0), abs=0.006)
    ssim = structural_similarity(source, noisy, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    assert raw("SSIM x10^2") == pytest.approx(ssim, abs=0.006e-2)


def test_missing_weights_fail_at_load_naming_them(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError, match="SqueezeNet"):
        PieBenchScorer(device="cpu", metrics=("lpips",)).load()
    with pytest.raises(WeightsNotFoundError, match="DINO"):
        PieBenchScorer(device="cpu", metrics=("structure_distance",), dino_weights=str(tmp_path / "x.pth")).load()


def test_background_equals_piebench_replica_on_saved_files(tmp_path):
    """The scorer on a float edit == PIE-Bench's own recipe on the edit saved as a PNG and read back:
    mask decoded with the forced border, images as float32 / 255 times (1 - mask), torchmetrics PSNR and MSE,
    SSIM as the torchmetrics release PIE-Bench ran (the cropped mean, i.e. scikit-image)."""
    from skimage.metrics import structural_similarity
    from torchmetrics.image import PeakSignalNoiseRatio
    from torchmetrics.regression import MeanSquaredError

    from autotune.tasks.piebench import decode_mask, encode_mask

    photo = Image.fromarray(data.astronaut())
    inner = np.zeros((512, 512), dtype=bool)
    inner[120:330, 140:380] = True
    mask = decode_mask(encode_mask(inner), (512, 512))  # as the PIE-Bench loader delivers it
    task = EditTask("p", photo, "a woman", "a robot", "change_object", None, mask)
    g = torch.Generator().manual_seed(0)
    src = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255).permute(2, 0, 1)
    edited = (src + 0.04 * torch.randn(src.shape, generator=g)).clamp(0, 1)
    row = PieBenchScorer(device="cpu", metrics=("psnr", "mse", "ssim")).score(task, edited[None])[0]

    path = tmp_path / "edit.png"
    Image.fromarray((edited.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    keep = 1 - mask[:, :, None].repeat(3, axis=2).astype(np.float32)
    a = np.asarray(photo).astype(np.float32) / 255 * keep
    b = np.array(Image.open(path)).astype(np.float32) / 255 * keep
    ta, tb = torch.tensor(a).permute(2, 0, 1), torch.tensor(b).permute(2, 0, 1)
    assert row["psnr"] == pytest.approx(PeakSignalNoiseRatio(data_range=1.0)(ta[None], tb[None]).item(), abs=1e-4)
    assert row["mse"] == pytest.approx(MeanSquaredError()(ta.contiguous(), tb.contiguous()).item(), abs=1e-7)
    want_ssim = structural_similarity(
        a, b, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert row["ssim"] == pytest.approx(want_ssim, abs=1e-6)
