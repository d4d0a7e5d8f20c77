"""CPU threads: a fair share of the usable cores among the autotune processes registered on them; overrides win."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from autotune import threads
from autotune.errors import InputError


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A private registry, torch's threads and the module's state restored afterwards, no override in the env."""
    for name in ("AUTOTUNE_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    before = torch.get_num_threads()
    torch.set_num_threads(len(threads.usable_cores()))  # torch's default here, whatever an earlier test set
    yield tmp_path / "autotune" / "running"
    if threads._state is not None and threads._state.entry is not None:
        threads._unregister(threads._state.entry)
    threads._state = None
    torch.set_num_threads(before)


def _other_process(folder, cores):
    """A live process registered on `cores` (a sleeping child, registered as autotune would register it)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    from autotune.process import process_start

    folder.mkdir(parents=True, exist_ok=True)
    entry = {"pid": child.pid, "start": process_start(child.pid), "cores": sorted(cores), "registered": time.time()}
    (folder / f"{child.pid}.json").write_text(json.dumps(entry))
    return child


@pytest.mark.parametrize("cores, processes, ceiling", [(2, 1, 2), (2, 2, 2), (2, 3, 2), (8, 3, 8), (8, 3, 2),
                                                       (16, 5, 16), (1, 4, 1)])
def test_fair_share_splits_the_cores(cores, processes, ceiling):
    shares = [threads.fair_share(cores, rank, processes, ceiling) for rank in range(processes)]
    assert all(1 <= s <= ceiling for s in shares)
    if processes <= cores and ceiling >= cores:
        assert sum(shares) == cores  # every core used, none twice
        assert max(shares) - min(shares) <= 1  # and evenly, the earliest registered first
        assert shares == sorted(shares, reverse=True)
    if processes > cores:
        assert shares == [1] * processes


def test_alone_a_process_takes_every_usable_core_up_to_torchs_default(registry):
    default = torch.get_num_threads()
    choice = threads.configure()
    assert choice.source == "auto"
    assert choice.threads == torch.get_num_threads() == max(1, min(default, len(threads.usable_cores())))
    (entry,) = registry.glob("*.json")
    assert json.loads(entry.read_text())["pid"] == os.getpid()


def test_a_second_process_on_the_same_cores_halves_the_share_and_gives_it_back(registry):
    cores = threads.usable_cores()
    if len(cores) < 2:
        pytest.skip("needs 2 usable cores")
    first = _other_process(registry, cores)  # registered first: it keeps the remainder
    try:
        choice = threads.configure()
        expected = threads.fair_share(len(cores), 1, 2, len(cores))
        assert choice.threads == torch.get_num_threads() == min(expected, threads._state.ceiling)
        assert "1 other autotune process(es)" in choice.reason
    finally:
        first.kill()
        first.wait()
    assert threads.rebalance(force=True) == threads._state.ceiling  # alone again: all of it back
    assert [p.name for p in registry.glob("*.json")] == [f"{os.getpid()}.json"]  # the dead one's file is gone


def test_processes_on_other_cores_do_not_count(registry):
    cores = threads.usable_cores()
    elsewhere = _other_process(registry, {max(cores) + 1000})
    try:
        assert threads.configure().threads == threads._state.ceiling
    finally:
        elsewhere.kill()
        elsewhere.wait()


def test_rebalance_looks_at_most_once_a_second(registry):
    threads.configure()
    assert threads.rebalance(force=True) is None  # nothing changed
    child = _other_process(registry, threads.usable_cores())
    try:
        threads._state.checked = time.monotonic()
        assert threads.rebalance() is None  # too soon: not even looked
    finally:
        child.kill()
        child.wait()


def test_follow_hooks_the_models_of_an_object(registry):
    class Parts:
        def __init__(self):
            self.unet, self.vae, self.name = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), "not a module"

    parts = Parts()
    threads.configure()
    calls = []
    real = threads.rebalance
    threads.rebalance = lambda force=False: calls.append(force)
    try:
        assert threads.follow(parts) == 2
        parts.unet(torch.zeros(1, 2))
        parts.vae(torch.zeros(1, 2))
    finally:
        threads.rebalance = real
    assert calls == [False, False]


def test_follow_reaches_the_modules_of_a_pipeline_among_them(registry):
    """The flow family keeps its modules in a diffusers pipeline (`components.pipe`); they are followed too, once."""
    class Pipe:  # what follow relies on: a `components` dict, as DiffusionPipeline has
        def __init__(self, transformer, vae):
            self.components = {"transformer": transformer, "vae": vae, "scheduler": object()}

    class Parts:
        def __init__(self):
            self.vae = torch.nn.Linear(2, 2)
            self.pipe = Pipe(torch.nn.Linear(2, 2), self.vae)

    parts = Parts()
    threads.configure()
    calls = []
    real = threads.rebalance
    threads.rebalance = lambda force=False: calls.append(force)
    try:
        assert threads.follow(parts) == 2
        parts.pipe.components["transformer"](torch.zeros(1, 2))
        parts.vae(torch.zeros(1, 2))
    finally:
        threads.rebalance = real
    assert calls == [False, False]


def test_a_followed_model_computes_the_same_while_its_threads_change(registry):
    """The hook runs inside the model call: it may change the threads, never the call's inputs or output."""
    cores = threads.usable_cores()
    if len(cores) < 2:
        pytest.skip("needs 2 usable cores")

    class Parts:
        def __init__(self):
            torch.manual_seed(0)
            self.model = torch.nn.Linear(4, 3)

    parts, x = Parts(), torch.randn(2, 4)
    expected = parts.model(x)
    threads.configure()
    assert threads.follow(parts) == 1
    before = torch.get_num_threads()
    other = _other_process(registry, cores)
    try:
        threads._state.checked = 0.0  # due for a look
        out = parts.model(x)  # the hook sees the other process and halves the threads
    finally:
        other.kill()
        other.wait()
    assert torch.get_num_threads() < before
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_overrides_win_in_order(registry, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    choice = threads.configure()
    assert (choice.source, choice.threads) == ("OMP_NUM_THREADS", None) and torch.get_num_threads() == 1
    assert threads.rebalance(force=True) is None  # an override is never rebalanced
    monkeypatch.setenv("AUTOTUNE_THREADS", "2")
    assert threads.configure() == threads.ThreadChoice(2, "AUTOTUNE_THREADS", "$AUTOTUNE_THREADS=2")
    assert torch.get_num_threads() == 2
    assert threads.configure(1).source == "--threads" and torch.get_num_threads() == 1
    assert len(list(registry.glob("*.json"))) == 1  # configured three times, registered once


@pytest.mark.parametrize("value", ["0", "-2", "two", ""])
def test_bad_thread_counts_are_refused(registry, monkeypatch, value):
    monkeypatch.setenv("AUTOTUNE_THREADS", value)
    if value == "":
        assert threads.configure().source == "auto"  # empty means unset
        return
    with pytest.raises(InputError, match="AUTOTUNE_THREADS=.*whole number of threads"):
        threads.configure()
    with pytest.raises(InputError, match="--threads"):
        threads.configure(int(value) if value.lstrip("-").isdigit() else 0)


def test_an_unwritable_registry_is_not_fatal(registry, monkeypatch, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    choice = threads.configure()
    assert choice.threads == threads._state.ceiling and threads._state.entry is None


def test_the_thread_count_does_not_change_an_edit(registry, tmp_path):
    """Rebalancing mid-run is safe only if threads change speed, not results: the shapes edit, byte for byte."""
    import numpy as np

    from autotune.cli import main
    from autotune.shapes.world import caption, random_scene, render

    scene = random_scene(np.random.default_rng(3))
    render(scene).save(tmp_path / "scene.png")
    source = caption(scene)
    word = scene.objects[0].color
    target = source.replace(word, "green" if word != "green" else "red", 1)
    outs = []
    for n in (1, 2):
        out = tmp_path / f"edit-{n}.png"
        assert main(["edit", "--model", "shapes", "--image", str(tmp_path / "scene.png"), "--source-prompt", source,
                     "--target-prompt", target, "--steps", "5", "--device", "cpu", "--threads", str(n), "-q",
                     "--out", str(out)]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_shapes_measure_takes_its_fair_share_beside_a_running_autotune_process(registry, monkeypatch):
    """`autotune shapes measure` beside another autotune process: it registers and computes with its share of the
    cores, not torch's default (two processes at the default slowed each other fourfold on 2 cores)."""
    from autotune.bench import shapes_model

    cores = threads.usable_cores()
    child = _other_process(registry, cores)
    seen = {}

    def fake_table(pipe, samples, steps, seed, guidances, version=1):
        seen["threads"] = torch.get_num_threads()
        return "| table |", {}

    monkeypatch.setattr(shapes_model, "load_pipeline", lambda model: object())
    monkeypatch.setattr(shapes_model, "text_to_image_table", fake_table)
    try:
        assert shapes_model.main(["--model", "shapes", "--samples", "1", "--skip-inversion"]) == 0
    finally:
        child.kill()
        child.wait()
    assert seen["threads"] == threads.fair_share(len(cores), 1, 2, len(cores))  # the fixture set torch's default
    assert threads._state is not None and threads._state.automatic


def test_shapes_measure_refuses_a_thread_count_below_one(registry, capsys):
    from autotune.cli import main

    assert main(["shapes", "measure", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
