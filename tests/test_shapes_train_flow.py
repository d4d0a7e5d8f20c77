"""The shapes-flow training script on a tiny configuration (seconds): its objective learns, it writes what the SD3
pipeline and autotune's flow family load, and a stopped run continues exactly. The full run (about 3 hours) is
`autotune shapes train-flow` (docs/shapes.md)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from safetensors.torch import load_file

from autotune.shapes import train_flow

TINY = ["--n-images", "24", "--vae-check", "4", "--layers", "2", "--heads", "2", "--head-dim", "8",
        "--text-dim", "16", "--text-dim-2", "8", "--text-projection", "8", "--text-projection-2", "8",
        "--text-layers", "2", "--steps", "5", "--batch", "3", "--warmup", "2", "--save-every", "2",
        "--measure-samples", "0", "--threads", "1"]


def _tiny_args(*extra: str):
    return train_flow.parser().parse_args(["--out", "unused", *TINY, *extra])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A pipeline folder written by 5 training steps of the tiny configuration."""
    out = tmp_path_factory.mktemp("shapes-flow") / "model"
    assert train_flow.main(["--out", str(out), "--state", str(out.parent / "state"), *TINY]) == 0
    return out


def test_the_loss_falls_on_a_fixed_batch():
    """The training objective, optimised as the loop does on one fixed batch, learns: from the adaLN-Zero start
    (zero velocity, so the loss is exactly E|noise - x0|^2) it falls well below, and the text encoders learn with the
    transformer."""
    from autotune.shapes.tokenizer import clip_tokenizer
    from autotune.shapes.world import caption, random_scene

    torch.manual_seed(0)
    args = _tiny_args()
    text_encoder = train_flow.build_text_encoder(args.text_dim, args.text_layers, args.text_projection)
    text_encoder_2 = train_flow.build_text_encoder(args.text_dim_2, args.text_layers, args.text_projection_2)
    transformer = train_flow.build_transformer(args, 16, 4)
    transformer.set_attn_processor(train_flow.RepeatedTokenJointAttnProcessor(train_flow.T5_ROWS))
    models = (transformer, text_encoder, text_encoder_2)
    params = [p for m in models for p in m.parameters()]
    text_before = [p.detach().clone() for p in text_encoder.parameters()]
    rng = np.random.default_rng(0)
    captions = [caption(random_scene(rng, version=2)) for _ in range(4)]
    tokens = clip_tokenizer()(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    gen = torch.Generator().manual_seed(1)
    latents, noise = torch.randn(4, 4, 16, 16, generator=gen), torch.randn(4, 4, 16, 16, generator=gen)
    sigma = torch.tensor([0.2, 0.4, 0.6, 0.8])

    def loss() -> torch.Tensor:
        return train_flow.flow_loss(transformer, text_encoder, text_encoder_2, latents, tokens, noise, sigma)

    with torch.no_grad():
        first = loss()
    assert torch.allclose(first, ((noise - latents) ** 2).mean())  # adaLN-Zero: the velocity starts at zero
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(60):
        value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    with torch.no_grad():
        last = loss()
    assert last < 0.4 * first, (float(first), float(last))  # measured: 1.96 to 0.49
    assert any(not torch.equal(a, b) for a, b in zip(text_before, text_encoder.parameters()))


def test_one_repeated_token_equals_the_pipelines_256_zero_rows():
    """Training runs the T5 zero rows as one token with log(256) added to its logit: the same output as diffusers'
    own processor on the 77 + 256 rows the pipeline feeds."""
    torch.manual_seed(0)
    args = _tiny_args()
    transformer = train_flow.build_transformer(args, 16, 8).eval()
    rows, pooled = torch.randn(2, 77, 24), torch.randn(2, 16)
    x, sigma = torch.randn(2, 8, 16, 16), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        # As a trained model: no zero-initialised layer, and the context embedder's bias makes the zero rows
        # non-zero inside the model.
        for p in transformer.parameters():
            p.normal_(0, 0.2)
        full = transformer(hidden_states=x, timestep=sigma * 1000,
                           encoder_hidden_states=torch.cat([rows, torch.zeros(2, 256, 24)], 1),
                           pooled_projections=pooled).sample
        transformer.set_attn_processor(train_flow.RepeatedTokenJointAttnProcessor(256))
        short = train_flow.velocity(transformer, x, sigma, rows, pooled)
        transformer.set_attn_processor(train_flow.RepeatedTokenJointAttnProcessor(77))
        other = train_flow.velocity(transformer, x, sigma, rows, pooled)
    assert torch.allclose(full, short, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(full, other, atol=1e-3)  # the count matters: it is not a no-op


def test_a_few_steps_give_an_sd3_folder_whose_text_encoding_training_matches(tiny_model):
    out = tiny_model
    meta = json.loads((out / "training.json").read_text())
    assert meta["steps_done"] == 5 and meta["world_version"] == 2 and meta["format"] == "StableDiffusion3Pipeline"
    assert set(meta["wall_time_minutes"]) >= {"data", "training"} and meta["loss_history"][-1][0] == 5
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    stored = load_file(out / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in stored.values()} == {torch.float16}

    pipe = StableDiffusion3Pipeline.from_pretrained(out, local_files_only=True)
    assert pipe.transformer.dtype == torch.float32 and pipe.vae.config.shift_factor is not None
    assert pipe.vae.config.scaling_factor != 1.0 and pipe.default_sample_size * pipe.vae_scale_factor == 64
    prompts = ["a red circle and a blue square on a white background", ""]
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False)
    assert embeds.shape == (2, 77 + 256, 24)
    assert torch.equal(embeds[:, 77:], torch.zeros_like(embeds[:, 77:]))  # the placeholder T5 gives zero rows
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        rows, pooled_here = train_flow.encode_text(pipe.text_encoder, pipe.text_encoder_2, ids)
    assert torch.equal(rows, embeds[:, :77]) and torch.equal(pooled_here, pooled)
    # Dropping T5 the diffusers way gives the same conditioning.
    no_t5 = StableDiffusion3Pipeline.from_pretrained(out, local_files_only=True, text_encoder_3=None,
                                                     tokenizer_3=None)
    embeds_none, _, pooled_none, _ = no_t5.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False)
    assert torch.equal(embeds_none, embeds) and torch.equal(pooled_none, pooled)
    image = pipe(prompts[0], num_inference_steps=2, guidance_scale=7.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3)


def test_a_stopped_run_continues_to_the_same_weights(tmp_path):
    whole = tmp_path / "whole"
    train_flow.main(["--out", str(whole), "--state", str(tmp_path / "s1"), *TINY])
    (tmp_path / "s2").mkdir()
    shutil.copy(tmp_path / "s1" / "data.pt", tmp_path / "s2" / "data.pt")  # the same data, not rendered again
    parts = tmp_path / "parts"
    resumed = ["--out", str(parts), "--state", str(tmp_path / "s2"), *TINY]
    train_flow.main([*resumed, "--stop-after", "3"])
    assert not parts.exists() and torch.load(tmp_path / "s2" / "checkpoint.pt", weights_only=True)["step"] == 3
    train_flow.main(resumed)
    for name in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "text_encoder_2/model.safetensors"):
        a, b = load_file(whole / name), load_file(parts / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    history = json.loads((parts / "training.json").read_text())["loss_history"]
    assert history == json.loads((whole / "training.json").read_text())["loss_history"]
    with pytest.raises(SystemExit, match="other settings"):
        train_flow.main([*resumed, "--lr", "0.1"])
    # Under the constant learning rate, a finished run can be extended: 3 steps, then 2 more, as 5 at once.
    (tmp_path / "s3").mkdir()
    shutil.copy(tmp_path / "s1" / "data.pt", tmp_path / "s3" / "data.pt")
    extended = ["--out", str(tmp_path / "extended"), "--state", str(tmp_path / "s3"), *TINY]
    train_flow.main([*extended, "--steps", "3"])
    train_flow.main(extended)
    a = load_file(whole / "transformer/diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "extended" / "transformer/diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_cooldown_decays_a_constant_run_to_zero_and_may_be_added_when_extending_it(tmp_path):
    args = _tiny_args("--steps", "10", "--warmup", "2", "--cooldown", "4")
    rates = [train_flow.learning_rate(step, args) for step in range(10)]
    assert rates == pytest.approx([3e-4] + [6e-4] * 6 + [4.5e-4, 3e-4, 1.5e-4])
    # A constant run's checkpoint continues under a cooldown (only the last steps' rates differ) ...
    assert train_flow.settings_of(args) == train_flow.settings_of(_tiny_args("--steps", "10", "--warmup", "2"))
    # ... but a cooldown on a cosine schedule, or longer than the steps after warmup, is refused before any work.
    for extra in (["--lr-schedule", "cosine"], ["--cooldown", "9"]):
        with pytest.raises(SystemExit, match="--cooldown"):
            train_flow.main(["--out", str(tmp_path / "m"), "--state", str(tmp_path / "s"), *TINY,
                             "--steps", "10", "--warmup", "2", "--cooldown", "4", *extra])
    assert not (tmp_path / "s").exists()


def test_partial_captions_leave_exactly_one_object_unsaid_in_the_asked_share_of_multi_object_scenes():
    from autotune.shapes.tokenizer import clip_tokenizer
    from autotune.shapes.world import caption

    args = _tiny_args("--n-images", "60", "--partial-captions", "0.5", "--caption-dropout", "0.1")
    tokenizer = clip_tokenizer()
    scenes = train_flow.scenes_of(60, 0)
    ids = tokenizer([caption(s) for s in scenes], padding="max_length", max_length=77, return_tensors="pt").input_ids
    partial_ids, has = train_flow.partial_caption_ids(args, ids, tokenizer)
    assert has.tolist() == [len(s.objects) >= 2 for s in scenes] and 0 < int(has.sum()) < 60
    for scene, row, multi in zip(scenes, partial_ids, has):
        text = tokenizer.decode(row, skip_special_tokens=True)
        if multi:
            one_less = {caption(scene.with_objects([o for o in scene.objects if o is not gone]))
                        for gone in scene.objects}
            assert text in one_less, (text, caption(scene))
        else:
            assert text == caption(scene)
    # In a batch: about half of the multi-object captions lose an object, no single-object one does, and the
    # caption dropout still empties about a tenth.
    empty = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    idx = torch.arange(60).repeat(200)
    tokens = train_flow.training_tokens(idx, ids, (partial_ids, has), empty, args, torch.Generator().manual_seed(0))
    dropped = (tokens == empty).all(1)
    unsaid = (tokens == partial_ids[idx]).all(1) & ~(tokens == ids[idx]).all(1)
    multi = has[idx]
    assert not unsaid[~multi].any()
    assert 0.40 < unsaid[multi].float().mean() < 0.50  # 0.5 kept from the dropout's 0.1: 0.45
    assert 0.08 < dropped.float().mean() < 0.12
    # Captions of other scenes than the cached ones are refused, not silently mismatched.
    with pytest.raises(SystemExit, match="cached training captions"):
        train_flow.partial_caption_ids(_tiny_args("--n-images", "60", "--seed", "1"), ids, tokenizer)


def test_a_run_begun_before_partial_captions_existed_continues_and_refuses_to_switch_them_on(tmp_path):
    run = ["--out", str(tmp_path / "model"), "--state", str(tmp_path / "state"), *TINY]
    train_flow.main([*run, "--stop-after", "2"])
    checkpoint = tmp_path / "state" / "checkpoint.pt"
    saved = torch.load(checkpoint, weights_only=True)
    del saved["settings"]["partial_captions"]  # as the shipped model's state was written
    torch.save(saved, checkpoint)
    with pytest.raises(SystemExit, match=r"other settings \(partial_captions\)"):
        train_flow.main([*run, "--partial-captions", "0.5"])
    train_flow.main(run)
    assert json.loads((tmp_path / "model" / "training.json").read_text())["steps_done"] == 5


def test_without_partial_captions_the_batch_draws_what_it_always_drew():
    args, ids = _tiny_args(), torch.arange(77 * 6).reshape(6, 77)
    empty = torch.zeros(77, dtype=torch.long)
    gen, reference = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    tokens = train_flow.training_tokens(torch.tensor([0, 5, 2]), ids, None, empty, args, gen)
    expected = ids[[0, 5, 2]].clone()
    expected[torch.rand(3, generator=reference) < args.caption_dropout] = empty
    assert torch.equal(tokens, expected) and torch.equal(gen.get_state(), reference.get_state())


def test_a_fine_tune_starts_exactly_at_the_folders_weights_and_records_it(tiny_model, tmp_path):
    (tmp_path / "s").mkdir()
    shutil.copy(tiny_model.parent / "state" / "data.pt", tmp_path / "s" / "data.pt")
    tuned = tmp_path / "tuned"
    run = ["--out", str(tuned), "--state", str(tmp_path / "s"), *TINY, "--init-from", str(tiny_model)]
    train_flow.main([*run, "--steps", "0"])  # no step: the folder written is the one started from
    for name in train_flow.HALF_STORED:
        a, b = load_file(tiny_model / name), load_file(tuned / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    meta = json.loads((tuned / "training.json").read_text())
    assert meta["init_from"]["model"] == "model" and meta["init_from"]["steps_done"] == 5
    assert "init_from" not in meta["args"]  # no path of the training machine ships
    train_flow.main(run)  # five steps of fine-tuning move the weights
    a = load_file(tiny_model / train_flow.WEIGHT_FILES["transformer"])
    b = load_file(tuned / train_flow.WEIGHT_FILES["transformer"])
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra, message", [
    (["--layers", "3"], r"architecture differs from this run's \(--layers 2\)"),
    (["--n-images", "30"], "other latents"),
])
def test_a_fine_tune_of_another_architecture_or_data_is_refused_with_what_to_pass(tiny_model, tmp_path, extra,
                                                                                  message):
    with pytest.raises(SystemExit, match=message):
        train_flow.main(["--out", str(tmp_path / "m"), "--state", str(tmp_path / "s"), *TINY, *extra,
                         "--init-from", str(tiny_model)])


def test_a_fine_tune_needs_a_folder_this_command_wrote_and_another_output(tiny_model, tmp_path):
    with pytest.raises(SystemExit, match="no training.json"):
        train_flow.main(["--out", str(tmp_path / "m"), "--state", str(tmp_path / "s"), *TINY,
                         "--init-from", str(tmp_path)])
    with pytest.raises(SystemExit, match="also --out"):
        train_flow.main(["--out", str(tiny_model), *TINY, "--init-from", str(tiny_model)])


def test_the_folder_loads_through_the_editor_as_a_flow_model_and_edits(tiny_model):
    """`Editor.from_pretrained(folder)`: autotune's flow family reads it (SD3 architecture, 64 px, the saved
    weights) and FlowEdit edits a world-version-2 task at its size."""
    from autotune import Editor, EditParams
    from autotune.shapes.tasks import shapes_tasks

    editor = Editor.from_pretrained(str(tiny_model), progress=False)
    assert editor.family.name == "flow" and editor.components.architecture == "sd3"
    assert editor.resolution == 64 and editor.default_params().method == "flowedit"
    saved = load_file(tiny_model / "transformer" / "diffusion_pytorch_model.safetensors")
    loaded = editor.components.transformer.state_dict()
    assert all(torch.equal(loaded[k], v.float()) for k, v in saved.items())
    task = shapes_tasks("change_color", "tune", 1, version=2)[0]
    result = editor.edit(task.image, task.source_prompt, task.target_prompt, EditParams(method="flowedit", steps=4))
    assert result.image.size == (64, 64)


def test_the_command_trains_then_measures_and_records_the_figures(tmp_path, capsys, monkeypatch):
    """`autotune shapes train-flow`: the training, then the text-to-image measurement (here on 2 captions) in
    training.json; the state is kept in the working directory's .autotune, not beside the model."""
    from autotune.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "weights" / "model"
    args = ["shapes", "train-flow", "--out", str(out), *TINY, "--measure-samples", "2", "--measure-steps", "2"]
    assert main(args) == 0
    meta = json.loads((out / "training.json").read_text())
    figures = meta["text_to_image"]
    assert figures["settings"]["samples"] == 2 and figures["settings"]["pipeline"] == "StableDiffusion3Pipeline"
    assert set(figures) >= {"guidance_7", "guidance_1", "vae_ceiling", "whole_scene_gap_points",
                            "whole_scene_gap_interval_points"}
    low, high = figures["whole_scene_gap_interval_points"]
    assert low <= figures["whole_scene_gap_points"] <= high
    assert 0.0 <= figures["guidance_7"]["colour"] <= 1.0 and "measure" in meta["wall_time_minutes"]
    assert "| 7 |" in capsys.readouterr().out
    assert (tmp_path / ".autotune" / "train-model" / "checkpoint.pt").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]


@pytest.mark.parametrize("action, option", [("measure", "--inversion-samples"), ("train", "--vae-steps"),
                                            ("train-flow", "--patch-size")])
def test_forwarding_commands_take_options_first(action, option, capsys):
    """`autotune shapes measure --samples 10` once failed (argparse left the leading options unrecognised); other
    commands still refuse unknown options."""
    from autotune.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["shapes", action, "--help"])
    assert exit_.value.code == 0 and option in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["shapes", "render", "--out", "unused", "--bogus"])
    assert exit_.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_the_whole_scene_gap_interval_is_paired_and_agrees_with_the_normal_approximation():
    """Same captions at two guidances: the bootstrap interval of the paired difference has the width the normal
    approximation gives it, and collapses where the two agree on every caption."""
    from autotune.bench.shapes_model import paired_gap_interval

    rng = np.random.default_rng(5)
    a = (rng.random(1000) < 0.6).astype(float)
    b = np.where(rng.random(1000) < 0.7, a, 1 - a)  # correlated with a, as two samples of one caption are
    low, high = paired_gap_interval(a, b)
    d = a - b
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert low < d.mean() < high
    assert abs((high - low) / 2 - half) < 0.1 * half
    unpaired_half = 1.96 * np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert (high - low) / 2 < unpaired_half  # pairing is what narrows it
    assert paired_gap_interval(a, a) == (0.0, 0.0)
