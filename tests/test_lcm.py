"""The multistep consistency sampler against diffusers' LCMScheduler, and through the pipeline."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from hf_checkpoints import write_tiny_pipeline

from jax_i2v.diffusion.lcm import LCMConfig, lcm_step
from jax_i2v.pipeline import I2VPipeline

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_steps_equal_diffusers_with_the_same_noise(prediction_type):
    config = LCMConfig(prediction_type=prediction_type)
    reference = diffusers.LCMScheduler.from_config(config.to_diffusers())
    reference.set_timesteps(4)
    timesteps = config.timesteps(4)
    assert timesteps.tolist() == reference.timesteps.tolist()
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 4, 3, 8, 8)).astype(np.float32)  # torch layout; the maths is elementwise
    schedule = config.schedule()
    ours = jnp.asarray(sample)
    for i, t in enumerate(timesteps):
        model_output = rng.standard_normal(sample.shape).astype(np.float32)
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(i))
        expected = reference.step(
            torch.from_numpy(model_output), int(t), torch.from_numpy(np.array(ours)), generator=torch.Generator().manual_seed(i)
        ).prev_sample
        next_t = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        ours, _ = lcm_step(schedule, config, jnp.asarray(model_output), int(t), next_t, ours, jnp.asarray(noise.numpy()))
        np.testing.assert_allclose(ours, expected.numpy(), atol=2e-5, rtol=1e-5)


def test_config_round_trips_through_diffusers():
    config = LCMConfig(beta_schedule="scaled_linear", timestep_scaling=10.0, prediction_type="v_prediction")
    assert LCMConfig.from_diffusers(dict(diffusers.LCMScheduler.from_config(config.to_diffusers()).config)) == config
    with pytest.raises(ValueError, match="timestep_spacing"):
        LCMConfig.from_diffusers({**config.to_diffusers(), "timestep_spacing": "trailing"})


def test_a_pipeline_folder_with_an_lcm_scheduler_samples_with_it(tmp_path, reference_dir):
    transformers = pytest.importorskip("transformers")
    folder = write_tiny_pipeline(tmp_path / "student", reference_dir / "unet", torch, diffusers, transformers)
    shutil.rmtree(folder / "scheduler")
    diffusers.LCMScheduler(beta_schedule="linear", timestep_scaling=4.0).save_pretrained(folder / "scheduler")
    pipe = I2VPipeline.from_pretrained(str(folder))
    assert isinstance(pipe.scheduler, LCMConfig) and pipe.scheduler.timestep_scaling == 4.0
    image = np.random.default_rng(0).uniform(0, 255, (16, 16, 3)).astype(np.uint8)
    kwargs = dict(num_frames=5, text_guidance=1.0, frameinit="none", seed=3, show_progress=False)
    one, four = (pipe(image, "a red circle", steps=n, **kwargs) for n in (1, 4))
    assert one.shape == four.shape == (1, 5, 16, 16, 3) and not np.allclose(one, four)
    with pytest.raises(ValueError, match="num_steps"):
        pipe(image, "a red circle", steps=51, **kwargs)
    pipe.save_pretrained(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "model_index.json").read_text())["scheduler"] == ["diffusers", "LCMScheduler"]
    np.testing.assert_array_equal(I2VPipeline.from_pretrained(str(tmp_path / "saved"))(image, "a red circle", steps=4, **kwargs), four)
