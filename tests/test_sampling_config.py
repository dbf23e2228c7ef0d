"""Sampling settings come from one place: `SamplingConfig`'s defaults, under a config's `sampling`
section, under the launchers' --sampling.KEY flags."""

import dataclasses
import pathlib

import ml_collections
import pytest
from test_pipeline import CONFIG

from jax_i2v.cli import parse_launcher_flags
from jax_i2v.config_utils import load_config
from jax_i2v.diffusion.ddim import DDIMConfig
from jax_i2v.diffusion.lcm import LCMConfig
from jax_i2v.models.unet import build_unet
from jax_i2v.pipeline import I2VPipeline, SamplingConfig, scheduler_from_config
from jax_i2v.train.previews import PreviewWriter
from launch import evaluate, sample

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
IMAGE = str(ROOT / "assets" / "red_circle_blue_square.png")
UNET = CONFIG  # a small UNet config; no test here compiles it


def _sample_flags(*sampling_flags):
    parse_launcher_flags(sample.FLAGS, [f"--config={TINY}", "--random_params", f"--image={IMAGE}", "--out=unused", *sampling_flags])
    return sample._SAMPLING()


def _evaluate_flags(*sampling_flags):
    parse_launcher_flags(evaluate.FLAGS, ["--checkpoint=unused", *sampling_flags])
    return evaluate._SAMPLING()


def test_the_launchers_the_pipeline_and_a_config_without_sampling_agree_on_the_defaults():
    defaults = SamplingConfig()
    assert (defaults.sampler, defaults.steps, defaults.text_guidance, defaults.eta) == ("ddim", 50, 7.5, 0.0)
    # No --sampling flags: nothing overrides what the pipeline or the config says.
    assert _sample_flags() == {} and _evaluate_flags() == {}
    for field in dataclasses.fields(SamplingConfig):  # what --help says an unset flag falls back to
        assert f"else {field.default})" in sample.FLAGS[f"sampling.{field.name}"].help
        assert evaluate.FLAGS[f"sampling.{field.name}"].help == sample.FLAGS[f"sampling.{field.name}"].help
    pipe = I2VPipeline(build_unet(UNET), {})
    assert pipe.sampling == defaults
    assert sample.resolve_sampling(pipe, None, False, _sample_flags()) == defaults
    assert SamplingConfig.from_config(ml_collections.ConfigDict()) == defaults
    # A config without a sampling section: the defaults, with the training's noise alpha and stride.
    config = load_config(TINY)
    del config["sampling"]
    config.objective.noise_alpha = 0.5
    assert SamplingConfig.from_config(config) == dataclasses.replace(defaults, noise_alpha=0.5, frame_stride=1.0)
    assert evaluate.trained_sampling(config, **_evaluate_flags()) == dataclasses.replace(defaults, noise_alpha=0.5, frame_stride=1.0)
    # A distilled student's pipeline folder (an LCM scheduler): the consistency sampler's defaults.
    student = I2VPipeline(build_unet(UNET), {}, scheduler=LCMConfig())
    assert student.sampling == SamplingConfig.defaults("lcm") == dataclasses.replace(defaults, sampler="lcm", steps=4, text_guidance=1.0)


def test_flags_override_the_config_section_which_overrides_the_defaults(tmp_path):
    config = load_config(TINY)
    section = config.sampling
    from_config = SamplingConfig.from_config(config)
    assert (from_config.steps, from_config.text_guidance, from_config.eta, from_config.fresh_noise_alpha) == (25, 1.25, 1.0, 0.0)
    assert from_config.image_guidance == SamplingConfig().image_guidance  # not in the section: the default
    assert from_config.noise_alpha == config.objective.noise_alpha and from_config.frame_stride == 1.0
    pipe = I2VPipeline(build_unet(UNET), {}, sampling=from_config)
    given = _sample_flags("--sampling.steps=7", "--sampling.eta=0.5", "--sampling.noise_alpha=2")
    assert given == {"steps": 7, "eta": 0.5, "noise_alpha": 2.0}
    resolved = sample.resolve_sampling(pipe, config, True, given)
    assert (resolved.steps, resolved.eta, resolved.noise_alpha, resolved.text_guidance) == (7, 0.5, 2.0, section.text_guidance)
    # evaluate.py: the same order, with the benchmark's frame stride under the flags.
    resolved = evaluate.trained_sampling(config, **_evaluate_flags("--sampling.steps=3", "--sampling.frameinit=none"))
    assert (resolved.steps, resolved.frameinit, resolved.eta, resolved.frame_stride) == (3, "none", section.eta, 1.0)
    # Training previews: the section at the run's preview step count.
    previews = PreviewWriter(config, [], [], str(tmp_path), num_steps=5, seed=0, mesh=None)
    assert previews.sampling == dataclasses.replace(from_config, steps=5)
    # The section, written into a config and read back, is the same settings.
    assert SamplingConfig.from_config({"sampling": from_config.to_config_dict()}) == from_config


def test_switching_to_the_consistency_sampler_starts_from_its_defaults_keeping_the_noise():
    config = load_config(TINY)
    config.objective.noise_alpha = 0.5
    config.sampling.frameinit = "butterworth"
    switched = SamplingConfig.from_config(config, sampler="lcm")
    assert (switched.steps, switched.text_guidance, switched.eta, switched.fresh_noise_alpha) == (4, 1.0, 0.0, None)
    assert (switched.noise_alpha, switched.frameinit, switched.frame_stride) == (0.5, "butterworth", 1.0)
    assert isinstance(switched.scheduler_for(scheduler_from_config(config)), LCMConfig)
    assert SamplingConfig.from_config(config, sampler="lcm", steps=2).steps == 2
    # A student's config (sampler "lcm" in its section) samples with the consistency sampler.
    config.sampling.sampler = "lcm"
    assert isinstance(scheduler_from_config(config), LCMConfig)
    assert isinstance(SamplingConfig().scheduler_for(LCMConfig()), DDIMConfig)


def test_bad_settings_are_refused_in_one_line():
    for bad, match in (
        (dict(steps=0), "sampling.steps"),
        (dict(eta=-1.0), "sampling.eta"),
        (dict(frameinit="sharp"), "sampling.frameinit"),
        (dict(sampler="euler"), "sampling.sampler"),
        (dict(noise_alpha=-0.5), "sampling.noise_alpha"),
    ):
        with pytest.raises(ValueError, match=match) as error:
            SamplingConfig(**bad)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="unknown sampling settings \\['step'\\]"):
        SamplingConfig.from_config({"sampling": {"step": 3}})
    with pytest.raises(SystemExit) as exit_info:
        _sample_flags("--sampling.frameinit=sharp")
    assert exit_info.value.code == 2
