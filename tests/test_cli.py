"""The `autotune` command as a user meets it: help, --version, pipes, and errors that come before a model loads.

Some tests run the installed console script (`.venv/bin/autotune`), since what they check (the version, a closed
pipe, what `--help` prints) happens in the real process, not in `main()` called from a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autotune import __version__
from autotune.cli import build_parser, main

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def installed_command() -> str:
    script = Path(sys.executable).with_name("autotune")
    if not script.is_file():
        pytest.fail(f"the autotune command is not installed beside {sys.executable}: pip install -e '.[dev]'")
    return str(script)


def run_command(*args: str, close_stdout: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if not close_stdout:
        return subprocess.run([installed_command(), *args], capture_output=True, text=True, env=env, timeout=300)
    proc = subprocess.Popen([installed_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    proc.stdout.close()  # the reader is gone before the first line is written, as `| head -0` would do
    err = proc.stderr.read()
    return subprocess.CompletedProcess(proc.args, proc.wait(timeout=300), "", err)


def _subparsers(parser: argparse.ArgumentParser, path: str = "autotune"):
    """Every (command path, parser) of the tree, the top one included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, f"{path} {name}")


def test_every_argument_of_every_command_says_what_it_is():
    missing = []
    for path, parser in _subparsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._SubParsersAction, argparse._HelpAction)):
                continue
            if not (action.help or "").strip():
                missing.append(f"{path} {action.dest if not action.option_strings else action.option_strings[0]}")
    assert not missing, f"arguments without help text: {missing}"


def test_help_shows_only_defaults_that_say_something():
    for command in ("tune", "edit", "evaluate", "report", "bench"):
        out = run_command(command, "--help")
        assert out.returncode == 0, out.stderr
        text = " ".join(out.stdout.split())  # argparse wraps lines
        for noise in ("(default: None)", "(default: True)", "(default: False)", "(default: [])"):
            assert noise not in text, (command, noise)
        assert text.count("Default:") + text.count("default:") > 0  # defaults that matter are still shown
    text = " ".join(run_command("tune", "--help").stdout.split())
    assert "--seed SEED sampler seed (other workers derive their own) (default: 0)" in text
    assert "(fewer wasted inversions of pruned trials, more and smaller UNet calls) --storage" in text


def test_version_of_the_installed_command():
    out = run_command("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"autotune {__version__}"


def test_a_closed_pipe_ends_quietly():
    """`autotune presets show ... | head`: the reader leaves early; no BrokenPipeError traceback."""
    out = run_command("presets", "show", "change_color", "--model", SD15, close_stdout=True)
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
    assert out.returncode == 141  # as a shell reports a command stopped by a closed pipe


def test_forwarding_commands_pass_options_through(capsys):
    with pytest.raises(SystemExit) as info:
        main(["shapes", "measure", "--help"])
    assert info.value.code == 0 and "--inversion-samples" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["presets", "list", "--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# edit: what can be checked without the model is checked before loading it


def _edit(capsys, tmp_path, *extra: str, image: str | None = None, model: str = "no-such/model") -> tuple[int, str]:
    if image is None:
        from PIL import Image

        image = str(tmp_path / "photo.png")
        Image.new("RGB", (40, 30), "white").save(image)
    args = ["edit", "--model", model, "--image", image, "--source-prompt", "a red circle on a white background",
            "--target-prompt", "a blue circle on a white background", "--out", str(tmp_path / "out.png"), "-q",
            *extra]
    code = main(args)
    return code, capsys.readouterr().err


def test_edit_checks_the_image_before_loading_the_model(tmp_path, capsys):
    code, err = _edit(capsys, tmp_path, image=str(tmp_path / "missing.png"))
    assert code == 2 and "--image" in err and "missing.png does not exist" in err
    assert "could not load model" not in err  # the model was never tried


@pytest.mark.parametrize("words, needle", [
    ("red", "must be two words"),
    ("green blue", "blend word 'green' does not appear in the source prompt"),
    ("red green", "blend word 'green' does not appear in the target prompt"),
])
def test_edit_checks_blend_words_before_loading_the_model(tmp_path, capsys, words, needle):
    code, err = _edit(capsys, tmp_path, "--blend-words", words)
    assert code == 2 and needle in err and "could not load model" not in err, err


def test_missing_model_says_how_to_get_it_with_todays_hub_cli(monkeypatch):
    from autotune.engine.checkpoint import locate
    from autotune.errors import ModelNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        locate("no-such-org/no-such-model")
    message = str(info.value)
    assert "`hf download no-such-org/no-such-model --local-dir DIR`" in message
    assert "huggingface-cli" not in message and "HF_HUB_OFFLINE=1 keeps the hub off" in message
    assert ".." not in message and "--model PATH" in message


def test_long_errors_are_cut_at_a_sentence_not_mid_word():
    from autotune.engine.checkpoint import first_line

    text = "First sentence here. " * 30 + "pass 'local_files_only=False' as input."
    short = first_line(RuntimeError(text), limit=100)
    assert short.endswith("First sentence here") and len(short) <= 100
    assert first_line(RuntimeError("one line.\nsecond")) == "one line"


def test_shapes_model_says_what_it_does_to_a_photo_and_unknown_words(tmp_path, capsys):
    """A 40x30 photo and a prompt about a cat through the 32 px shapes model: both are said, not silently done."""
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), "white").save(image)
    code = main(["edit", "--model", "shapes", "--image", str(image), "--source-prompt", "a cat on a sofa",
                 "--target-prompt", "a dog on a sofa", "--blend-words", "cat dog", "--steps", "2", "--device", "cpu",
                 "--threads", "1", "-q", "--out", str(tmp_path / "out.png")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "the image is 40x30; the model works at 32 px" in captured.err
    assert "never saw 'cat', 'sofa', 'dog'" in captured.err
    assert "32x24" in captured.out and Image.open(tmp_path / "out.png").size == (32, 24)


def test_shapes_vocabulary_is_what_the_world_captions_use():
    import numpy as np

    from autotune.shapes.world import caption, random_scene, unknown_words

    rng = np.random.default_rng(0)
    assert all(unknown_words(caption(random_scene(rng))) == [] for _ in range(200))
    assert unknown_words("A Red, circle and a cat; a CAT!") == ["cat"]


def test_a_bad_shapes_category_is_reported_as_the_tasks_option(tmp_path, capsys):
    code = main(["tune", "--model", "no-such/model", "--tasks", "shapes:recolor", "--trials", "2", "-q",
                 "--project-dir", str(tmp_path / "proj"), "--presets-dir", str(tmp_path / "presets")])
    err = capsys.readouterr().err
    assert code == 2 and "--tasks shapes:recolor: unknown edit category 'recolor'" in err
    assert "--category" not in err.split("error:", 1)[1].split(";")[0]
