"""Studies in a browser: optuna-dashboard on the storage `autotune tune` used, with the edit thumbnails the tuner keeps
in Optuna's artifact store, and the provenance of the preset a study gave as notes on it.

`dashboard_app` builds the WSGI application (optuna-dashboard's own) for a storage and finds the artifact folder the
studies recorded; `serve` runs it on a threaded server (the page asks for many things at once). `annotate` writes
the notes: on the study, where its preset went and everything its provenance says; on each trial a pick came from,
which pick. The dashboard shows notes beside the study and the trial.
"""

from __future__ import annotations

import json
import logging
import socketserver
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from autotune.errors import InputError
from autotune.tuning import contract
from autotune.tuning.storage import DEFAULT_PROJECT_DIR, JOURNAL_NAME, open_storage

logger = logging.getLogger(__name__)


@dataclass
class Dashboard:
    """What `serve` runs: the application, the storage it reads (redacted) and the artifact folder, if any."""

    app: Any
    storage: str
    artifacts: Path | None
    studies: list[str]


def dashboard_app(storage: str | None = None, project_dir: str | Path = DEFAULT_PROJECT_DIR,
                  artifact_dir: str | Path | None = None) -> Dashboard:
    """optuna-dashboard on `storage` (None: `<project_dir>/studies.journal`, which must exist: the dashboard never
    creates an empty one), with the artifact folder `artifact_dir`, else the one the studies recorded
    (`autotune.artifacts`), else `<project_dir>/artifacts` when it exists."""
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    if storage is None:
        journal = Path(project_dir) / JOURNAL_NAME
        if not journal.is_file():
            raise InputError(f"no studies at {journal}: run `autotune tune` first (it keeps its studies there), or "
                             "give --storage (a .journal file or postgresql://...) or the --project-dir tune used")
        storage = str(journal)
    store = open_storage(storage, project_dir=project_dir)
    summaries = optuna.get_all_study_summaries(store.storage, include_best_trial=False)
    folder = _artifact_folder(summaries, project_dir, artifact_dir)
    artifacts = FileSystemArtifactStore(str(folder)) if folder is not None else None
    app = optuna_dashboard.wsgi(store.storage, artifact_store=artifacts)
    return Dashboard(app, store.url, folder, sorted(s.study_name for s in summaries))


def _artifact_folder(summaries: list[Any], project_dir: str | Path, artifact_dir: str | Path | None) -> Path | None:
    if artifact_dir is not None:
        folder = Path(artifact_dir)
        if not folder.is_dir():
            raise InputError(f"--artifact-dir {folder} is not a folder")
        return folder
    recorded = sorted({str(s.user_attrs[contract.ARTIFACTS]) for s in summaries
                       if s.user_attrs.get(contract.ARTIFACTS)})
    if len(recorded) > 1:
        logger.warning("the studies keep their images in several folders (%s); showing %s (choose with "
                       "--artifact-dir)", ", ".join(recorded), recorded[0])
    for candidate in [*recorded, str(Path(project_dir) / "artifacts")]:
        if Path(candidate).is_dir():
            return Path(candidate)
    return None


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connections do not keep the command from stopping


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        logger.debug("dashboard: " + format, *args)


def serve(dashboard: Dashboard, host: str = "127.0.0.1", port: int = 8080) -> WSGIServer:
    """A threaded HTTP server for the dashboard, bound and ready (`serve_forever()` runs it); port 0 takes a free
    one (`server.server_port`). Fails with an InputError when the port is taken."""
    try:
        return make_server(host, port, dashboard.app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port (0: any free "
                         "one)") from None


def url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/dashboard/"


# ---------------------------------------------------------------------------------------------------------------------
# Notes: the preset a study gave, where the dashboard shows the study


def annotate(study: optuna.Study, preset: Any, path: Path | None) -> None:
    """Note on the study the preset it gave (where it was written, its picks, its provenance) and on each trial a
    pick came from which pick it is. Best effort: a note is a convenience, the preset file is the record."""
    from optuna_dashboard import save_note

    try:
        save_note(study, preset_note(preset, path))
        by_trial: dict[int, list[str]] = {}
        for style, pick in preset.picks.items():
            index = pick.get("front_index")
            if index is not None and preset.front[index].trial is not None:
                by_trial.setdefault(preset.front[index].trial, []).append(style)
        trials = study.get_trials(deepcopy=False)
        for number, styles in sorted(by_trial.items()):
            if number < len(trials):
                trial = optuna.trial.Trial(study, trials[number]._trial_id)
                save_note(trial, f"**{', '.join(styles)}** pick of the preset `{path.name if path else '(not saved)'}`"
                          f" for {preset.category}.")
    except Exception as exc:  # noqa: BLE001 - never fail a finished study over a note
        logger.warning("could not write the preset's notes on study %s: %s", study.study_name, exc)


def preset_note(preset: Any, path: Path | None) -> str:
    """Markdown: the preset's file, picks and provenance, as the dashboard's study note."""
    prov = dict(preset.provenance)
    lines = [f"## Preset for {preset.category}", "",
             f"Written to `{Path(path).resolve()}`" if path else "Not saved.", "",
             "| pick | trial | method | w_src | w_tgt | fidelity | edit strength |",
             "|---|---|---|---|---|---|---|"]
    for style, pick in preset.picks.items():
        index = pick.get("front_index")
        point = preset.front[index] if index is not None else None
        values = (point.values or {}) if point else {}
        params = pick["params"]
        lines.append(f"| {style} | {point.trial if point else ''} | {params.method} | {_short(params.w_src)} | "
                     f"{_short(params.w_tgt)} | {_short(values.get('fidelity'))} | "
                     f"{_short(values.get('edit_strength'))} |")
    lines += ["", "Provenance:", ""]
    for key in ("kind", "author", "created", "autotune_version", "n_complete", "n_trials", "task_count",
                "task_fingerprint", "sampler", "study"):
        if prov.get(key) is not None:
            value = prov[key] if not isinstance(prov[key], (dict, list)) else json.dumps(prov[key], default=str)
            lines.append(f"- {key}: `{value}`")
    lines.append(f"- model: `{preset.model.get('id')}` (weights `{preset.model.get('file_hash')}`)")
    lines.append(f"- content hash: `{preset.content_hash}`")
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
