"""Atomic preset writes, for real: concurrent writers, a read-only directory, a full disk."""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from autotune.errors import PresetError
from autotune.params import EditParams
from autotune.presets.preset import FrontPoint, Preset

OBJ = [
    {"name": "fidelity", "direction": "maximize", "metrics": {"preservation": 1.0}},
    {"name": "edit_strength", "direction": "maximize", "metrics": {"edit_success": 1.0}},
]


def big_preset(seed: int, n_points: int = 300) -> Preset:
    """A preset of a few hundred kB, so that a non-atomic write would be caught half-way."""
    points = [
        FrontPoint(EditParams(w_src=0.01 * i, w_tgt=1 + 0.02 * i + seed), {"fidelity": 1 - i / n_points,
                   "edit_strength": i / n_points + 0.001 * seed}, {f"m{k}": float(k) for k in range(20)}, i)
        for i in range(n_points)
    ]
    return Preset.from_front(points, category="change_color", model={"id": f"writer-{seed}"}, objectives=OBJ,
                             provenance={"kind": "tuned", "author": f"writer {seed}"})


def _writer(directory: str, seed: int, rounds: int, barrier) -> None:
    preset = big_preset(seed)
    barrier.wait()
    for _ in range(rounds):
        preset.save(Path(directory) / "shared.json")  # everyone fights over one file
        preset.save(Path(directory) / f"own-{seed}.json")


def test_eight_processes_writing_at_once_leave_only_valid_files(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(9)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), seed, 4, barrier)) for seed in range(8)]
    for proc in procs:
        proc.start()
    barrier.wait()
    reads = 0
    while any(p.is_alive() for p in procs):  # read while they write: never a partial file
        if (tmp_path / "shared.json").exists():
            Preset.load(tmp_path / "shared.json", strict=True)
            reads += 1
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert reads > 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"own-{i}.json" for i in range(8)] + ["shared.json"]  # no temp file left behind
    for seed in range(8):
        assert Preset.load(tmp_path / f"own-{seed}.json", strict=True).model["id"] == f"writer-{seed}"
    winner = Preset.load(tmp_path / "shared.json", strict=True)
    assert winner.model["id"] in {f"writer-{s}" for s in range(8)}


def _save_as_nobody(directory: Path, target: Path) -> tuple[int, str]:
    """Try to save as an unprivileged user (root ignores permission bits). Returns (exit code, message)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        code, message = 1, "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            big_preset(1).save(target)
        except PresetError as exc:
            code, message = 0, str(exc)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            code, message = 2, repr(exc)
        os.write(write_fd, message.encode())
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        message = fh.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), message


def test_read_only_directory_gives_a_clear_error_and_no_partial_file():
    base = Path(tempfile.mkdtemp(prefix="autotune-ro-"))
    try:
        os.chmod(base, 0o755)
        directory = base / "presets"
        directory.mkdir()
        target = directory / "p.json"
        big_preset(0).save(target)
        before = target.read_bytes()
        os.chmod(directory, 0o555)
        if os.geteuid() == 0:
            code, message = _save_as_nobody(directory, target)
        else:
            try:
                big_preset(1).save(target)
                code, message = 1, "no error"
            except PresetError as exc:
                code, message = 0, str(exc)
        assert code == 0, message
        assert "read-only" in message and str(directory) in message and "unchanged" in message
        assert sorted(p.name for p in directory.iterdir()) == ["p.json"]
        assert target.read_bytes() == before
    finally:
        os.chmod(base / "presets", 0o755)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_full_disk_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "p.json"
    big_preset(0).save(target)
    before = target.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(PresetError, match="disk is full"):
        big_preset(1).save(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


@contextlib.contextmanager
def _tmpfs(options: str):
    mount = Path(tempfile.mkdtemp(prefix="autotune-tmpfs-"))
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=False,
                            capture_output=True)
    if result.returncode != 0:
        mount.rmdir()
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_really_full_filesystem(tmp_path):
    with _tmpfs("size=256k") as mount:
        target = mount / "p.json"
        big_preset(0, n_points=20).save(target)
        before = target.read_bytes()
        with open(mount / "filler", "wb", buffering=0) as fh, contextlib.suppress(OSError):  # fill the disk
            while True:
                fh.write(b"\0" * 4096)
        with pytest.raises(PresetError, match="disk is full"):
            big_preset(1).save(target)
        assert target.read_bytes() == before
        assert sorted(p.name for p in mount.iterdir()) == ["filler", "p.json"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only tmpfs needs root")
def test_really_read_only_filesystem():
    with _tmpfs("size=64k") as mount:
        (mount / "presets").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        with pytest.raises(PresetError, match="read-only"):
            big_preset(0).save(mount / "presets" / "p.json")
        assert list((mount / "presets").iterdir()) == []
