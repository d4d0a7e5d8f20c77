"""The search space: validation, serialisation, mapping trials to EditParams, paper points, grids, CLI parsing."""

from __future__ import annotations

import json

import optuna
import pytest

from autotune.errors import InputError
from autotune.guidance import GuidanceSchedule
from autotune.params import EditParams
from autotune.tuning.search_space import PAPER_POINTS, SearchSpace, parse_knob_arg


def test_default_space_is_the_guidance_pair():
    space = SearchSpace.default()
    assert space.to_dict() == {"w_src": {"low": 0.0, "high": 2.0, "step": 0.1}, "w_tgt": {"low": 1.0, "high": 12.0}}
    assert PAPER_POINTS == {"siminversion": {"w_src": 0.5, "w_tgt": 7.5}, "ddim": {"w_src": 1.0, "w_tgt": 7.5}}
    assert space.paper_points() == [("siminversion", {"w_src": 0.5, "w_tgt": 7.5}),
                                    ("ddim", {"w_src": 1.0, "w_tgt": 7.5})]


def test_default_w_src_is_sampled_on_its_grid_so_inversions_repeat():
    import optuna

    space = SearchSpace.default()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = [study.ask(space.distributions()).params["w_src"] for _ in range(60)]
    assert all(abs(v * 10 - round(v * 10)) < 1e-9 and 0 <= v <= 2 for v in values)
    assert len(set(values)) < len(values)  # 60 draws from 21 values: the cache gets hits
    assert space.to_params({"w_src": 0.6000000000000001, "w_tgt": 7.5}).w_src.start == 0.6  # what presets show


@pytest.mark.parametrize("knobs, match", [
    ({"w_src": {"low": 2, "high": 1}}, "low=2 > high=1"),
    ({"w_src": {"low": -1, "high": 1}}, "leaves the allowed range"),
    ({"cross_replace": {"low": 0.2, "high": 1.5}}, "leaves the allowed range"),
    ({"w_tgt": {"low": 1, "high": float("nan")}}, "finite number"),
    ({"w_tgt": {"low": 0, "high": 5, "log": True}}, "log=True"),
    ({"steps": {"low": 10.5, "high": 20}}, "whole number"),
    ({"method": ["siminversion", "magic"]}, "subset"),
    ({"guidance": {"low": 0, "high": 1}}, "unknown knob"),
    ({"w_src": {"low": 0}}, "needs 'low' and 'high'"),
    ({"w_tgt_end": {"low": 1, "high": 2}, "w_tgt_begin": {"low": 0, "high": 0.5}}, "not both"),
])
def test_bad_spaces_are_refused(knobs, match):
    with pytest.raises(InputError, match=match):
        SearchSpace(knobs)


def test_round_trip_through_json():
    space = SearchSpace.default(steps={"low": 10, "high": 50, "step": 10}, method=["siminversion", "ddim"],
                                reweight={"low": 0.5, "high": 4, "log": True})
    again = SearchSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert again == space and again.distributions() == space.distributions()


def test_trials_map_to_edit_params():
    base = EditParams(cross_replace=0.3)
    space = SearchSpace.default(base=base, steps={"low": 10, "high": 30, "step": 10}, w_tgt_end={"low": 1, "high": 3})
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask(space.distributions())
        params = space.to_params(trial.params)
        assert params.w_src == GuidanceSchedule.constant(trial.params["w_src"])
        assert params.w_tgt == GuidanceSchedule.linear(trial.params["w_tgt"], trial.params["w_tgt_end"])
        assert params.steps == trial.params["steps"] and params.steps in (10, 20, 30)
        assert params.cross_replace == 0.3  # not searched: the base value
        assert EditParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params


def test_interval_schedule_knobs():
    space = SearchSpace.default(w_tgt_begin={"low": 0.0, "high": 0.5}, w_tgt_finish={"low": 0.5, "high": 1.0})
    params = space.to_params({"w_src": 0.5, "w_tgt": 9.0, "w_tgt_begin": 0.2, "w_tgt_finish": 0.8})
    assert params.w_tgt == GuidanceSchedule.interval(9.0, 0.2, 0.8, 1.0)


def test_paper_points_fix_other_knobs_to_the_published_settings():
    space = SearchSpace.default(method=["ddim", "siminversion"], cross_replace={"low": 0.1, "high": 0.9})
    points = dict(space.paper_points())
    assert points["siminversion"] == {"w_src": 0.5, "w_tgt": 7.5, "method": "siminversion", "cross_replace": 0.4}
    narrow = SearchSpace({"w_src": {"low": 0.0, "high": 0.8}, "w_tgt": {"low": 1, "high": 12}})
    assert [name for name, _ in narrow.paper_points()] == ["siminversion"]  # (1, 7.5) lies outside
    assert SearchSpace({"w_tgt": {"low": 1, "high": 12}}).paper_points() == []


def test_grid_includes_the_paper_values():
    grid = SearchSpace.default().grid(3)
    assert grid == {"w_src": [0.0, 0.5, 1.0, 2.0], "w_tgt": [1.0, 6.5, 7.5, 12.0]}


@pytest.mark.parametrize("text, expected", [
    ("w_src=0:2", ("w_src", {"low": 0.0, "high": 2.0})),
    ("steps=10:50:10", ("steps", {"low": 10, "high": 50, "step": 10})),
    ("w_tgt=1:12:log", ("w_tgt", {"low": 1.0, "high": 12.0, "log": True})),
    ("method=siminversion,ddim", ("method", {"choices": ["siminversion", "ddim"]})),
])
def test_cli_knob_syntax(text, expected):
    assert parse_knob_arg(text) == expected


@pytest.mark.parametrize("text", ["w_src", "w_src=0", "w_src=a:b", "nope=1:2", "w_src=1:2:3:4"])
def test_cli_knob_syntax_errors(text):
    with pytest.raises(InputError):
        parse_knob_arg(text)
