"""Typed job settings (fresco_backend.config): one conversion at the edge, the schema's defaults, one step count."""
from __future__ import annotations

import pickle
from dataclasses import fields

import numpy as np
import pytest

from fresco_contract import settings as S
from fresco_backend.config import AttentionConfig, ControlNetUse, FeatureOptConfig, JobConfig, Lora, Sampling


def setting_fields(kind=JobConfig, path=""):
    """(dotted field path, setting name, field default) of every setting-backed field, nested groups too."""
    for f in fields(kind):
        if "group" in f.metadata:
            yield from setting_fields(f.default_factory, f"{path}{f.name}.")
        elif "setting" in f.metadata:
            default = f.default
            if "item" in f.metadata:  # a list setting: a tuple of frozen items, compared as the schema's dicts
                default = tuple(vars(item) for item in default)
            yield f"{path}{f.name}", f.metadata["setting"], default


def test_every_setting_has_one_typed_field_with_the_schema_default():
    mapped = [name for _, name, _ in setting_fields()]
    assert sorted(mapped) == sorted(S.BY_NAME)                      # none lost, none twice
    assert all(default == S.BY_NAME[name].default for _, name, default in setting_fields())


def test_list_settings_become_tuples_of_typed_items():
    config = JobConfig.of({"prompt": "x", "controls": [{"kind": "tile", "scale": 0.5}, {"kind": "canny"}],
                           "loras": [{"path": "/a.safetensors", "weight": 0.8}]})
    assert config.control.nets == (ControlNetUse("tile", 0.5), ControlNetUse("canny", 0.7))
    assert config.loras == (Lora("/a.safetensors", 0.8),)
    assert JobConfig().control.nets == (ControlNetUse("canny", 0.7),) and JobConfig().loras == ()


def test_of_converts_validated_settings():
    values = {"prompt": "a fox", "steps": 30, "keyframes": "interval", "key_interval": 4, "opt_lr": 0.5,
              "lambda_temporal": 2.0, "canny_low": 10, "flow": "dis", "model": "m", "mode": "per_frame"}
    config = JobConfig.of(S.validate(values))
    assert JobConfig.of(values) == config                          # validated (defaults filled) on the way
    with pytest.raises(TypeError, match="settings mapping, not JobConfig"):
        JobConfig.of(config)                                        # converted once, at the edge
    assert (config.sampling.steps, config.keyframes.choice, config.keyframes.interval) == (30, "interval", 4)
    assert (config.optimisation.lr, config.attention.lambda_t, config.control.canny_low) == (0.5, 2.0, 10)
    assert (config.model, config.fresco) == ("m", False)
    with pytest.raises(S.SettingsError, match="steps"):
        JobConfig.of({"prompt": "x", "steps": 0})


def below_the_edge():
    """(name, call with a config) of every function below the edge that takes a job's JobConfig."""
    from fresco_backend import plan, translate
    from fresco_backend.annotators import annotator_downloads
    from fresco_backend.job_files import check_job_files
    from fresco_backend.models import choose_models

    frames = [np.zeros((8, 8, 3), np.uint8)] * 3
    return [("translate_frames", lambda c: list(translate.translate_frames(None, frames, c))),
            ("keyframes_for", lambda c: plan.keyframes_for(frames, c)),
            ("make_plan", lambda c: plan.make_plan(frames, c, 2)),
            ("LocalRunner", lambda c: translate.LocalRunner(None, frames, c, None)),
            ("choose_models", choose_models), ("annotator_downloads", annotator_downloads),
            ("check_job_files", check_job_files)]


@pytest.mark.parametrize("name, call", below_the_edge(), ids=[name for name, _ in below_the_edge()])
def test_below_the_edge_a_settings_mapping_is_refused_not_validated_again(name, call):
    with pytest.raises(TypeError, match=r"expected a JobConfig, got dict: .*JobConfig\.of\(settings\)"):
        call(S.validate({"prompt": "x"}))


def test_a_config_pickles_as_it_is():  # how it reaches the Ray workers (server/ray_pool.py)
    config = JobConfig.of({"prompt": "x", "controls": [{"kind": "tile", "scale": 0.5}],
                           "loras": [{"path": "/a.safetensors", "weight": 0.8}]})
    assert pickle.loads(pickle.dumps(config)) == config


def test_group_defaults_are_the_schema_defaults():
    assert FeatureOptConfig().lr == S.BY_NAME["opt_lr"].default
    assert FeatureOptConfig().end_opt_step == S.BY_NAME["opt_end_step"].default
    assert AttentionConfig().temporal_min_t == S.BY_NAME["temporal_min_t"].default
    assert JobConfig().sampling == Sampling()


@pytest.mark.parametrize("steps, strength", [(20, 0.75), (20, 1.0), (7, 0.5), (4, 0.05), (1, 0.3), (150, 0.33)])
def test_executed_steps_is_what_the_loop_runs(pipe, steps, strength):
    from fresco_backend.denoise import timesteps_for

    sampling = Sampling(steps=steps, strength=strength)
    assert len(timesteps_for(pipe, sampling)) == sampling.executed_steps >= 1
    assert sampling.skipped_steps + sampling.executed_steps == steps


def test_draft_quality_runs_fewer_steps_smaller_and_without_feature_optimisation():
    from fresco_contract.estimate import estimate_job

    final, draft = JobConfig.of({"prompt": "x"}), JobConfig.of({"prompt": "x", "quality": "draft"})
    assert final == JobConfig.of({"prompt": "x", "quality": "final"}) and final.optimisation.enabled
    assert (draft.sampling.steps, draft.sampling.executed_steps, draft.optimisation.enabled) == (6, 4, False)
    assert final.sampling.work_size(1920, 1080) == (896, 512) and draft.sampling.work_size(1920, 1080) == (448, 256)
    assert draft.sampling.work_size(256, 256) == (128, 128)  # of the source's own size when it is smaller
    assert JobConfig.of({"prompt": "x", "quality": "draft", "steps": 5}).sampling.steps == 5  # fewer stay fewer
    assert draft.attention == final.attention and draft.keyframes == final.keyframes  # the same keys
    cost, cheap = (estimate_job(s, 100, 1920, 1080) for s in ({}, {"quality": "draft"}))
    assert cheap.keys == cost.keys and cheap.work_size == (448, 256) and cheap.steps == 4
