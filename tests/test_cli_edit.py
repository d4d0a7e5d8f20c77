"""`autotune edit` end to end on a tiny pipeline saved to disk."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from autotune.cli import main


@pytest.fixture()
def photo_path(tmp_path):
    from skimage import data

    path = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()).resize((48, 48)).save(path)
    return path


def test_edit_writes_a_png(tiny_model_dir, photo_path, tmp_path, capsys):
    out = tmp_path / "out" / "edited.png"
    code = main(
        [
            "edit",
            "--model",
            str(tiny_model_dir),
            "--image",
            str(photo_path),
            "--source-prompt",
            "a woman in a space suit",
            "--target-prompt",
            "a man in a space suit",
            "--blend-words",
            "woman man",
            "--steps",
            "4",
            "--w-tgt",
            "6",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(out),
            "--save-source",
        ]
    )
    assert code == 0
    image = Image.open(out)
    assert image.size == (32, 32) and image.mode == "RGB"
    assert (tmp_path / "out" / "edited.source.png").is_file()
    assert np.asarray(image).std() > 0
    assert "w_tgt=6" in capsys.readouterr().out


def test_edit_with_a_preset_file(tiny_model_dir, photo_path, tmp_path):
    from autotune import Editor
    from autotune.params import EditParams
    from autotune.presets.preset import FrontPoint, Preset

    editor = Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False)
    points = [
        FrontPoint(EditParams(w_src=0.5, w_tgt=w, steps=3), {"fidelity": f, "edit_strength": e})
        for w, f, e in ((3.0, 0.9, 0.2), (6.0, 0.7, 0.6), (9.0, 0.3, 0.8))
    ]
    preset = Preset.from_front(
        points,
        category="change_object",
        model=editor.model_info(),
        objectives=[
            {"name": "fidelity", "direction": "maximize", "metrics": {"m": 1.0}},
            {"name": "edit_strength", "direction": "maximize", "metrics": {"n": 1.0}},
        ],
    )
    preset_path = tmp_path / "p.json"
    preset.save(preset_path)
    assert json.loads(preset_path.read_text())["category"] == "change_object"
    out = tmp_path / "edited.png"
    code = main(
        [
            "edit",
            "--model",
            str(tiny_model_dir),
            "--image",
            str(photo_path),
            "--source-prompt",
            "a woman",
            "--target-prompt",
            "a man",
            "--preset",
            f"{preset_path}:aggressive",
            "--device",
            "cpu",
            "-q",
            "--out",
            str(out),
        ]
    )
    assert code == 0 and out.is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--image", "/nonexistent.png"], "does not exist"),
        (["--steps", "0"], "steps=0"),
        (["--w-src", "-1"], "not a valid guidance scale"),
        (["--blend-words", "cat dog"], "does not appear in the source prompt"),
        (["--out", "x.gif"], "must end in .png"),
    ],
)
def test_user_errors_exit_2_without_traceback(tiny_model_dir, photo_path, tmp_path, capsys, extra, message):
    args = [
        "edit",
        "--model",
        str(tiny_model_dir),
        "--image",
        str(photo_path),
        "--source-prompt",
        "a woman",
        "--target-prompt",
        "a man",
        "--device",
        "cpu",
        "-q",
        "--out",
        str(tmp_path / "o.png"),
    ]
    code = main(args + extra)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    text = capsys.readouterr().out
    for option in ("--w-src", "--w-tgt", "--blend-words", "--method", "--steps", "--preset", "--scheduler"):
        assert option in text
