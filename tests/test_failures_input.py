"""Bad input refused at the door (docs/failures.md): images, masks, prompts, task files, presets, storage, parameters.

CLI cases check the exit code (2), that the message names what is wrong and where, and that no traceback is
printed; inputs autotune accepts and converts (grayscale, RGBA, 16-bit, animated images) check the conversion.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from skimage import data

from autotune.cli import main
from autotune.errors import InputError
from autotune.images import MAX_PIXELS, load_image
from autotune.params import EditParams
from autotune.tasks.taskfile import load_task_file

SRC, TGT = "a woman in a space suit", "a man in a space suit"


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err


def assert_refused(code: int, err: str, *needles: str) -> None:
    """Exit 2, one `autotune ...: error:` line naming every needle, and no traceback."""
    assert code == 2, err
    assert "Traceback" not in err and "error:" in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and that holds no pixel data (a few dozen bytes)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture()
def photo_path(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()).resize((48, 48)).save(path)
    return path


@pytest.fixture()
def edit_args(tiny_model_dir, photo_path, tmp_path):
    """`autotune edit` on the tiny pipeline; a case replaces or adds options."""

    def build(**changes: str) -> list[str]:
        options = {
            "--model": str(tiny_model_dir),
            "--image": str(photo_path),
            "--source-prompt": SRC,
            "--target-prompt": TGT,
            "--steps": "2",
            "--device": "cpu",
            "--out": str(tmp_path / "out.png"),
        }
        options.update({f"--{k.replace('_', '-')}": v for k, v in changes.items()})
        args = ["edit", "-q"]
        for key, value in options.items():
            args += [key, value]
        return args

    return build


# ---------------------------------------------------------------------------------------------------------------------
# Images


def test_corrupt_image_file(edit_args, tmp_path, capsys):
    bad = tmp_path / "noise.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_refused(*cli(capsys, *edit_args(image=str(bad))), str(bad), "not a readable image")


def test_truncated_image_file(edit_args, photo_path, tmp_path, capsys):
    cut = tmp_path / "cut.png"
    cut.write_bytes(photo_path.read_bytes()[:400])
    assert_refused(*cli(capsys, *edit_args(image=str(cut))), str(cut), "corrupt or truncated")


def test_text_file_named_like_an_image(edit_args, tmp_path, capsys):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo\n")
    assert_refused(*cli(capsys, *edit_args(image=str(text))), str(text), "not a readable image")


def test_directory_given_as_the_image(edit_args, tmp_path, capsys):
    assert_refused(*cli(capsys, *edit_args(image=str(tmp_path))), str(tmp_path), "is a directory")


def test_zero_sized_image(edit_args, tmp_path, capsys):
    zero = tmp_path / "zero.png"
    zero.write_bytes(png_header_only(0, 10))
    assert_refused(*cli(capsys, *edit_args(image=str(zero))), str(zero), "not a readable image")
    with pytest.raises(InputError, match="empty"):
        load_image(np.zeros((0, 8, 3), np.uint8))


def test_huge_image_is_refused_before_decoding(edit_args, tmp_path, capsys):
    side = int(MAX_PIXELS**0.5) + 100  # over autotune's limit, under PIL's bomb warning: autotune's own message
    big = tmp_path / "big.png"
    big.write_bytes(png_header_only(side, side))
    assert_refused(*cli(capsys, *edit_args(image=str(big))), str(big), f"{side}x{side}", "downscale it first")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(30000, 30000))  # PIL's decompression-bomb limit
    assert_refused(*cli(capsys, *edit_args(image=str(bomb))), str(bomb), "decompression bomb")


def test_grayscale_image_becomes_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((8, 8), 77, np.uint8), "L").save(path)
    rgb = load_image(path)
    assert rgb.mode == "RGB" and np.asarray(rgb).tolist() == np.full((8, 8, 3), 77).tolist()


def test_rgba_image_is_composited_on_white(tmp_path):
    pixels = np.zeros((8, 8, 4), np.uint8)
    pixels[..., 0] = 200
    pixels[:4, ..., 3] = 255  # top half opaque red-ish, bottom half fully transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(pixels, "RGBA").save(path)
    rgb = np.asarray(load_image(path))
    assert rgb[:4].reshape(-1, 3).tolist() == [[200, 0, 0]] * 32
    assert rgb[4:].reshape(-1, 3).tolist() == [[255, 255, 255]] * 32


def test_16_bit_image_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(path)  # 32896 / 65535 * 255 = 128
    assert Image.open(path).mode.startswith("I;16")
    assert np.asarray(load_image(path))[0, 0].tolist() == [128, 128, 128]


def test_16_bit_image_in_a_task_file_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(tmp_path / "deep.png")
    row = {"image": "deep.png", "source_prompt": "a", "target_prompt": "b", "category": "change_color"}
    (tmp_path / "t.jsonl").write_text(json.dumps(row) + "\n")
    task = load_task_file(tmp_path / "t.jsonl")[0]
    assert np.asarray(task.image)[0, 0].tolist() == [128, 128, 128]  # PIL's convert("RGB") would give 255



def test_32_bit_float_image_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "float.tiff"
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(path)
    assert Image.open(path).mode == "F"
    assert np.asarray(load_image(path))[0, 0].tolist() == [128, 128, 128]  # PIL's convert("RGB") gives 0


@pytest.mark.parametrize("array, expected", [
    (np.full((4, 4, 3), 300, np.int64), "dtype int64 has values 300..300, outside 0..255"),
    (np.full((4, 4, 3), -5, np.int16), "dtype int16 has values -5..-5, outside 0..255"),
    (np.full((4, 4, 3), 1 + 1j), "dtype complex128; use uint8, uint16 or floats"),
    (np.full((4, 4, 3), np.nan), "NaN or infinite"),
    (np.zeros((4, 4, 2), np.uint8), "must be HxW, HxWx3 or HxWx4"),
])
def test_image_arrays_that_would_wrap_or_make_no_sense_are_refused(array, expected):
    with pytest.raises(InputError, match=re.escape(expected)):
        load_image(array)


def test_image_arrays_of_other_integer_types_and_bools_in_range_are_accepted():
    assert np.asarray(load_image(np.full((4, 4, 3), 200, np.int32)))[0, 0].tolist() == [200, 200, 200]
    assert np.asarray(load_image(np.ones((4, 4), bool)))[0, 0].tolist() == [255, 255, 255]

def test_animated_image_uses_the_first_frame_with_a_warning(tmp_path, caplog):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with caplog.at_level(logging.WARNING, logger="autotune.images"):
        rgb = load_image(path)
    assert np.asarray(rgb)[0, 0].tolist() == [255, 0, 0]
    assert "2 frames; using the first" in caplog.text


def test_odd_image_modes_still_edit_end_to_end(edit_args, tmp_path, capsys):
    path = tmp_path / "gray16.png"
    Image.fromarray((np.arange(48 * 40).reshape(48, 40) * 30).astype(np.uint16)).save(path)
    code = main(edit_args(image=str(path)))
    assert code == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "out.png").mode == "RGB"



# ---------------------------------------------------------------------------------------------------------------------
# Output paths: checked before the model loads, so no edit is computed and then lost


@pytest.mark.parametrize("out, message", [
    ("blocker/edited.png", "exists and is not a directory"),
    ("/proc/autotune-no/edited.png", "cannot create the folder /proc/autotune-no"),
    (".", "must end in .png"),
    ("folder.png", "is a directory"),
])
def test_unwritable_edit_output_fails_before_the_model_loads(photo_path, tmp_path, capsys, monkeypatch, out, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    (tmp_path / "folder.png").mkdir()
    args = ["edit", "--model", "no/such-model", "--image", str(photo_path), "--source-prompt", SRC,
            "--target-prompt", TGT, "--out", out]
    assert_refused(*cli(capsys, *args), "--out", message)  # the bogus model shows nothing was loaded


def test_evaluate_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / "results").write_text("not a folder")
    code, err = cli(capsys, "evaluate", "--tasks", "shapes:change_color", "--out", str(tmp_path / "results"),
                    "--model", "no/such-model")
    assert_refused(code, err, f"--out: {tmp_path / 'results'} exists and is not a directory")

# ---------------------------------------------------------------------------------------------------------------------
# Task files and masks: `autotune evaluate` reads the tasks before it loads a model


GOOD_ROW = {"id": "t1", "image": "photo.png", "source_prompt": SRC, "target_prompt": TGT, "category": "change_object"}


def evaluate(capsys, tmp_path, tasks) -> tuple[int, str]:
    return cli(capsys, "evaluate", "--tasks", str(tasks), "--out", str(tmp_path / "eval"), "--model", "no/such-model")


def jsonl(tmp_path, *rows, name="tasks.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_task_file_malformed_json_line(photo_path, tmp_path, capsys):
    path = jsonl(tmp_path, GOOD_ROW, '{"id": "t2", "image": ')
    assert_refused(*evaluate(capsys, tmp_path, path), f"{path}, line 2: not valid JSON")


def test_task_file_malformed_csv_line(photo_path, tmp_path, capsys):
    path = tmp_path / "tasks.csv"
    path.write_text(f"id,image,source_prompt,target_prompt,category\nt1,photo.png,{SRC},{TGT},change_object,extra\n")
    assert_refused(*evaluate(capsys, tmp_path, path), f"{path}, line 2: more cells than header columns")


def test_task_file_missing_field(photo_path, tmp_path, capsys):
    row = {k: v for k, v in GOOD_ROW.items() if k != "target_prompt"}
    path = jsonl(tmp_path, row)
    assert_refused(*evaluate(capsys, tmp_path, path), f"{path}, line 1 (task 't1'), field 'target_prompt': missing")


def test_task_file_duplicate_id(photo_path, tmp_path, capsys):
    path = jsonl(tmp_path, GOOD_ROW, GOOD_ROW)
    assert_refused(*evaluate(capsys, tmp_path, path), f"{path}, line 2, field 'id': 't1' already used on line 1")


def test_task_file_unknown_category(photo_path, tmp_path, capsys):
    path = jsonl(tmp_path, dict(GOOD_ROW, category="recolour"))
    assert_refused(*evaluate(capsys, tmp_path, path), "field 'category'", "unknown edit category")



@pytest.mark.parametrize("words, where", [("cat dog", "'cat' does not appear in the source_prompt"),
                                          ("woman dog", "'dog' does not appear in the target_prompt")])
def test_task_file_blend_word_absent_from_its_prompt(photo_path, tmp_path, capsys, words, where):
    path = jsonl(tmp_path, dict(GOOD_ROW, blend_words=words))
    assert_refused(*evaluate(capsys, tmp_path, path), f"{path}, line 1 (task 't1'), field 'blend_words': {where}")


def test_task_file_blend_words_match_like_the_engine(photo_path, tmp_path):
    row = dict(GOOD_ROW, source_prompt="A Woman, in a space suit.", blend_words=["woman", "man"])
    assert load_task_file(jsonl(tmp_path, row))[0].blend_words == ("woman", "man")

def test_task_file_not_utf8(tmp_path, capsys):
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(b"\xff\xfe" + json.dumps(GOOD_ROW).encode("utf-16-le") + b"\n")
    assert_refused(*evaluate(capsys, tmp_path, path), str(path), "not UTF-8", "save it as UTF-8")


def test_task_file_line_is_not_an_object(tmp_path, capsys):
    path = jsonl(tmp_path, "[1, 2, 3]")
    assert_refused(*evaluate(capsys, tmp_path, path), f"{path}, line 1: expected a JSON object, got list")


def test_task_file_without_tasks(tmp_path, capsys):
    path = jsonl(tmp_path, "")
    assert_refused(*evaluate(capsys, tmp_path, path), f"{path}: holds no tasks")


def test_task_file_image_corrupt(tmp_path, capsys):
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    path = jsonl(tmp_path, GOOD_ROW)
    assert_refused(*evaluate(capsys, tmp_path, path), "line 1 (task 't1'), field 'image': cannot read")


def test_task_file_image_is_a_decompression_bomb(tmp_path, capsys):
    (tmp_path / "photo.png").write_bytes(png_header_only(30000, 30000))
    path = jsonl(tmp_path, GOOD_ROW)
    assert_refused(*evaluate(capsys, tmp_path, path), "field 'image': cannot read", "decompression bomb")
    side = int(MAX_PIXELS**0.5) + 100
    (tmp_path / "photo.png").write_bytes(png_header_only(side, side))
    assert_refused(*evaluate(capsys, tmp_path, path), "field 'image'", f"{side}x{side}", "downscale it first")


def test_task_file_pickle_is_not_a_task_source(tmp_path, capsys):
    path = tmp_path / "tasks.pkl"
    path.write_bytes(b"\x80\x04K\x01.")
    assert_refused(*evaluate(capsys, tmp_path, path), str(path), "not a task source")


def test_unknown_category_option(photo_path, tmp_path, capsys):
    path = jsonl(tmp_path, GOOD_ROW)
    code, err = cli(capsys, "evaluate", "--tasks", str(path), "--category", "paint", "--out", str(tmp_path / "e"))
    assert_refused(code, err, "--category", "paint")


def _mask_row(tmp_path, mask: np.ndarray, suffix: str = ".png") -> dict:
    Image.fromarray(data.astronaut()).resize((48, 48)).save(tmp_path / "photo.png")
    Image.fromarray(mask).save(tmp_path / f"mask{suffix}")
    return dict(GOOD_ROW, mask=f"mask{suffix}")


def test_mask_of_the_wrong_size(tmp_path, capsys):
    path = jsonl(tmp_path, _mask_row(tmp_path, np.zeros((40, 48), np.uint8)))
    assert_refused(*evaluate(capsys, tmp_path, path), "field 'mask': mask is 48x40 but the image is 48x48")


def test_empty_mask_is_kept_with_a_warning(tmp_path, caplog):
    path = jsonl(tmp_path, _mask_row(tmp_path, np.zeros((48, 48), np.uint8)))
    with caplog.at_level(logging.WARNING, logger="autotune.tasks.taskfile"):
        task = load_task_file(path)[0]
    assert not task.mask.any()
    assert "field 'mask': mask marks no pixel" in caplog.text


def test_full_mask_is_kept_with_a_warning(tmp_path, caplog):
    path = jsonl(tmp_path, _mask_row(tmp_path, np.full((48, 48), 255, np.uint8)))
    with caplog.at_level(logging.WARNING, logger="autotune.tasks.taskfile"):
        task = load_task_file(path)[0]
    assert task.mask.all()
    assert "mask marks every pixel" in caplog.text


def test_non_binary_mask_is_thresholded_at_half_with_a_warning(tmp_path, caplog):
    truth = np.zeros((48, 48), np.uint8)
    truth[10:30, 12:20] = 255
    path = jsonl(tmp_path, _mask_row(tmp_path, truth, ".jpg"))  # JPEG noise around the square, faint values > 0
    assert (np.asarray(Image.open(tmp_path / "mask.jpg").convert("L")) > 0).sum() > truth.astype(bool).sum()
    with caplog.at_level(logging.WARNING, logger="autotune.tasks.taskfile"):
        task = load_task_file(path)[0]
    assert task.mask.tolist() == (truth > 0).tolist()
    assert "not black and white; pixels >= 128 count as edited" in caplog.text


def test_run_length_mask_with_an_odd_count(tmp_path, capsys):
    Image.fromarray(data.astronaut()).resize((48, 48)).save(tmp_path / "photo.png")
    path = jsonl(tmp_path, dict(GOOD_ROW, mask=[3, 4, 5]))
    assert_refused(*evaluate(capsys, tmp_path, path), "field 'mask'", "odd number of values")



def test_task_prompt_past_77_tokens_stops_evaluate_before_the_first_edit(tiny_model_dir, photo_path, tmp_path, capsys):
    path = jsonl(tmp_path, dict(GOOD_ROW, id="ok"), dict(GOOD_ROW, id="long", target_prompt="a man " + "word " * 80))
    out = tmp_path / "eval"
    code, err = cli(capsys, "evaluate", "--tasks", str(path), "--out", str(out), "--model", str(tiny_model_dir),
                    "--device", "cpu", "-q", "--steps", "2", "--scorer", "shapes")
    assert_refused(code, err, f"task 'long' ({path}, line 2): target prompt is 82 tokens long", "at most 75")
    assert not list(out.rglob("*.png"))  # refused before any edit, not when the run reached the task

# ---------------------------------------------------------------------------------------------------------------------
# Prompts


def test_empty_target_prompt(edit_args, capsys):
    assert_refused(*cli(capsys, *edit_args(target_prompt="  ")), "target prompt is empty")


def test_prompt_past_77_tokens(edit_args, capsys):
    assert_refused(*cli(capsys, *edit_args(source_prompt="word " * 80)), "source prompt is 80 tokens", "at most 75")


def test_blend_words_not_a_pair(edit_args, capsys):
    assert_refused(*cli(capsys, *edit_args(blend_words="woman")), "blend_words 'woman' must be two words")


def test_blend_word_absent_from_the_target_prompt(edit_args, capsys):
    err = cli(capsys, *edit_args(blend_words="woman dog"))
    assert_refused(*err, "blend word 'dog' does not appear in the target prompt")


@pytest.fixture(scope="module")
def editor(tiny_model_dir):
    from autotune import Editor

    return Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False)


def test_non_ascii_prompts_and_blend_words_edit(editor, photo_path):
    from autotune import EditParams

    result = editor.edit(photo_path, "une tasse de café crème ☕", "une tasse de thé vert ☕",
                         EditParams(steps=2), blend_words=("café", "thé"))
    assert result.pixels.shape == (3, 32, 32) and bool(result.pixels.isfinite().all())


def test_empty_source_prompt_inverts_unconditionally_with_a_warning(editor, photo_path, caplog):
    from autotune import EditParams

    with caplog.at_level(logging.WARNING, logger="autotune.engine.editor"):
        result = editor.edit(photo_path, "", "a man", EditParams(steps=2))
    assert "source prompt is empty" in caplog.text and bool(result.pixels.isfinite().all())


# ---------------------------------------------------------------------------------------------------------------------
# Presets given to `autotune edit --preset`


def _preset_dict(model_id: str) -> dict:
    from autotune.params import EditParams
    from autotune.presets.preset import FrontPoint, Preset

    points = [FrontPoint(EditParams(w_tgt=w, steps=2), {"fidelity": f, "edit_strength": e})
              for w, f, e in ((3.0, 0.9, 0.2), (6.0, 0.7, 0.6), (9.0, 0.3, 0.8))]
    objectives = [{"name": "fidelity", "direction": "maximize", "metrics": {"m": 1.0}},
                  {"name": "edit_strength", "direction": "maximize", "metrics": {"n": 1.0}}]
    return Preset.from_front(points, category="change_object", model={"id": model_id}, objectives=objectives).to_dict()


@pytest.fixture()
def preset_file(tmp_path, tiny_model_dir):
    def write(mutate=None, model_id=None) -> str:
        preset = _preset_dict(model_id or str(tiny_model_dir))
        preset.pop("content_hash")
        if mutate:
            mutate(preset)
        path = tmp_path / "preset.json"
        path.write_text(json.dumps(preset))
        return str(path)

    return write


def test_preset_malformed_json(edit_args, tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text('{"schema_version": 1, "category": ')
    assert_refused(*cli(capsys, *edit_args(preset=str(path))), "broken.json", "not valid JSON")


def test_preset_unknown_schema_version(edit_args, preset_file, capsys):
    path = preset_file(lambda d: d.update(schema_version=99))
    assert_refused(*cli(capsys, *edit_args(preset=path)), "preset.json", "newer autotune")


def test_preset_value_out_of_range(edit_args, preset_file, capsys):
    path = preset_file(lambda d: d["picks"]["balanced"]["params"].update(w_tgt=-4.0))
    assert_refused(*cli(capsys, *edit_args(preset=path)), "preset.json", "picks.balanced.params", "w_tgt")


def test_preset_extra_keys_are_ignored_with_a_warning(edit_args, preset_file, capsys):
    path = preset_file(lambda d: d.update(run_after_load="rm -rf /"))
    with pytest.warns(UserWarning, match="unknown key.*run_after_load"):
        code = main(edit_args(preset=path))
    assert code == 0, capsys.readouterr().err


def test_preset_for_another_model(edit_args, preset_file, capsys):
    path = preset_file(model_id="someone/else")
    assert_refused(*cli(capsys, *edit_args(preset=path)), "made for model 'someone/else'",
                   "--ignore-preset-mismatch")
    with pytest.warns(UserWarning, match="overridden"):
        assert main(edit_args(preset=path) + ["--ignore-preset-mismatch"]) == 0


def test_preset_huge_file(edit_args, tmp_path, capsys):
    from autotune.presets.preset import MAX_PRESET_BYTES

    path = tmp_path / "huge.json"
    with open(path, "wb") as handle:
        handle.truncate(MAX_PRESET_BYTES + 1)
    assert_refused(*cli(capsys, *edit_args(preset=str(path))), "huge.json", "refused unread")


def test_preset_missing_file(edit_args, tmp_path, capsys):
    assert_refused(*cli(capsys, *edit_args(preset=str(tmp_path / "gone.json"))), "gone.json")


# ---------------------------------------------------------------------------------------------------------------------
# Storage given to `autotune tune` (opened before any task or model is loaded)


def tune_args(tmp_path, *extra: str) -> list[str]:
    return ["tune", "--model", "no/such-model", "--tasks", "shapes:change_color", "--trials", "2", "-q",
            "--project-dir", str(tmp_path / "proj"), "--presets-dir", str(tmp_path / "presets"), *extra]


def test_storage_malformed_url(tmp_path, capsys):
    code, err = cli(capsys, *tune_args(tmp_path, "--storage", "postgresql://me:hunter2@db:port/x"))
    assert_refused(code, err, "malformed storage URL")
    assert "hunter2" not in err


def test_storage_unreachable_server(tmp_path, capsys):
    code, err = cli(capsys, *tune_args(tmp_path, "--storage", "postgresql://me:hunter2@127.0.0.1:1/x"))
    assert_refused(code, err, "unreachable", "me:***@127.0.0.1:1")
    assert "hunter2" not in err


def test_storage_wrong_credentials(tmp_path, capsys, postgres_url):
    url = postgres_url
    from sqlalchemy.engine import make_url

    bad = make_url(url).set(password="definitely-wrong").render_as_string(hide_password=False)
    code, err = cli(capsys, *tune_args(tmp_path, "--storage", bad))
    assert_refused(code, err, "credentials")
    assert "definitely-wrong" not in err


# ---------------------------------------------------------------------------------------------------------------------
# Parameters


@pytest.mark.parametrize("option, value, message", [
    ("w_tgt", "nan", "not a valid guidance scale"),
    ("w_src", "inf", "not a valid guidance scale"),
    ("cross_replace", "1.5", "cross_replace=1.5 must be a fraction"),
    ("steps", "-3", "steps=-3 must be a whole number >= 1"),
    ("reweight", "-1", "reweight=-1.0 must be a number >= 0"),
])
def test_bad_edit_parameters_fail_before_the_model_loads(photo_path, tmp_path, capsys, option, value, message):
    args = ["edit", "--model", "no/such-model", "--image", str(photo_path), "--source-prompt", SRC,
            "--target-prompt", TGT, "--out", str(tmp_path / "o.png"), f"--{option.replace('_', '-')}", value]
    assert_refused(*cli(capsys, *args), message)  # the model name is bogus: the parameters were checked first



@pytest.mark.parametrize("value", ["3", 2.5, -1, True])
def test_bad_null_text_iterations_name_the_field(value):
    with pytest.raises(InputError, match=f"null_text_iterations={value!r} must be a whole number >= 0"):
        EditParams(null_text_iterations=value)


def test_bad_parameter_in_a_preset_names_the_pick_and_field(tmp_path):
    from autotune.errors import PresetError
    from autotune.presets.preset import Preset

    preset = _preset_dict("org/model")
    preset.pop("content_hash")
    preset["picks"]["balanced"]["params"]["null_text_iterations"] = "3"
    with pytest.raises(PresetError, match=r"p\.json: picks\.balanced\.params: null_text_iterations='3'"):
        Preset.loads(json.dumps(preset), source="p.json")

@pytest.mark.parametrize("space, message", [
    ("w_src=2:1", "search space: w_src has low=2.0 > high=1.0"),
    ("w_tgt=0:5:log", "search space: w_tgt uses log=True, so low must be > 0"),
    ("w_src=a:b", "--space 'w_src=a:b': write w_src=LOW:HIGH"),
    ("guidance=0:1", "--space 'guidance=0:1': unknown knob"),
])
def test_bad_search_ranges(tmp_path, capsys, space, message):
    assert_refused(*cli(capsys, *tune_args(tmp_path, "--space", space)), message)


@pytest.mark.parametrize("value", ["1", "0.2", "nan"])
def test_bad_prune_confidence_fails_before_the_model_loads(tmp_path, capsys, value):
    assert_refused(*cli(capsys, *tune_args(tmp_path, "--prune-confidence", value)), "pruning confidence")


@pytest.mark.parametrize("value", ["0", "-5"])
def test_bad_cache_size_fails_before_the_model_loads(tmp_path, capsys, value):
    assert_refused(*cli(capsys, *tune_args(tmp_path, "--cache-mb", value)), f"--cache-mb {value}: give the memory")


@pytest.mark.parametrize("value", ["0", "-2"])
def test_bad_task_batch_fails_before_the_model_loads(tmp_path, capsys, value):
    assert_refused(*cli(capsys, *tune_args(tmp_path, "--task-batch", value)), f"--task-batch {value}: give the tasks")
    evaluate = ["evaluate", "--model", str(tmp_path / "no-such-model"), "--tasks", "shapes:change_color",
                "--out", str(tmp_path / "eval"), "-q", "--task-batch", value]
    assert_refused(*cli(capsys, *evaluate), f"--task-batch {value}: give the tasks")


def test_bad_trial_budget_and_batch(tiny_model_dir, tmp_path, capsys):
    base = ["tune", "--model", str(tiny_model_dir), "--device", "cpu", "--tasks", "shapes:change_color", "-q",
            "--project-dir", str(tmp_path / "proj"), "--presets-dir", str(tmp_path / "presets")]
    assert_refused(*cli(capsys, *base, "--trials", "0"), "trials")
    assert_refused(*cli(capsys, *base, "--trials", "2", "--batch", "0"), "batch")


def test_evaluate_method_and_preset_together(tiny_model_dir, photo_path, tmp_path, capsys):
    path = jsonl(tmp_path, GOOD_ROW)
    code, err = cli(capsys, "evaluate", "--tasks", str(path), "--out", str(tmp_path / "e"), "--model",
                    str(tiny_model_dir), "--device", "cpu", "-q", "--preset", "balanced", "--method", "ddim")
    assert_refused(code, err, "either --method or --preset")



# ---------------------------------------------------------------------------------------------------------------------
# Security: nothing in autotune's own code can run code from data or weights


def _calls(tree):
    import ast

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "?") if isinstance(func, ast.Attribute) else ""  # "" = a bare name
            yield node, owner, name


def test_no_code_runs_from_data_or_weights():
    """trust_remote_code is never set, torch.load always has weights_only=True, no eval/exec/pickle.load(s)/yaml.load,
    and the only unpickler is LPIPS's numpy-only one (tests/test_scoring_lpips.py checks it)."""
    import ast
    from pathlib import Path

    import autotune

    problems, torch_loads = [], 0
    for path in sorted(Path(autotune.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, owner, name in _calls(tree):
            where = f"{path.name}:{node.lineno}"
            keywords = {k.arg: k.value for k in node.keywords}
            remote = keywords.get("trust_remote_code")
            if remote is not None and not (isinstance(remote, ast.Constant) and remote.value is False):
                problems.append(f"{where}: trust_remote_code")
            if (owner, name) == ("torch", "load"):
                torch_loads += 1
                safe = keywords.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if (owner, name) in (("pickle", "load"), ("pickle", "loads"), ("yaml", "load"), ("", "eval"),
                                 ("", "exec"), ("marshal", "loads")):
                problems.append(f"{where}: {owner + '.' if owner else ''}{name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any("Unpickler" in ast.unparse(b) for b in node.bases):
                if path.name != "lpips_weights.py":
                    problems.append(f"{path.name}:{node.lineno}: an unpickler")
    assert torch_loads >= 2  # the scan sees the calls it is meant to check
    assert problems == []


def test_bad_shapes_task_count_fails_before_the_model_loads(tmp_path, capsys):
    args = tune_args(tmp_path)
    args[args.index("shapes:change_color")] = "shapes:change_color:lots"
    assert_refused(*cli(capsys, *args), "shapes:change_color:lots: the task count must be a whole number >= 1")
