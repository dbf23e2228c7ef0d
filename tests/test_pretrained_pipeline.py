"""A diffusers-layout ConsistI2V pipeline folder loads, samples and round-trips through save_pretrained."""

import json
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
from hf_checkpoints import write_tiny_pipeline
from PIL import Image
from safetensors.numpy import load_file

from jax_i2v.convert import WEIGHTS_NAME
from jax_i2v.diffusion.ddim import DDIMConfig
from jax_i2v.pipeline import I2VPipeline
from jax_i2v.text import HashedWordEncoder
from launch import sample

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

SAMPLING = dict(num_frames=5, steps=2, frame_stride=3, seed=0, show_progress=False)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, reference_dir):
    return write_tiny_pipeline(tmp_path_factory.mktemp("consisti2v"), reference_dir / "unet", torch, diffusers, transformers)


@pytest.fixture(scope="module")
def first_image():
    return (np.random.default_rng(0).uniform(0, 255, (20, 24, 3))).astype(np.uint8)


@pytest.fixture(scope="module")
def loaded(pipeline_dir, first_image):
    pipe = I2VPipeline.from_pretrained(str(pipeline_dir))
    return pipe, pipe(first_image, "a red circle moves left", **SAMPLING)


def test_loads_and_samples_with_the_folders_scheduler(pipeline_dir, loaded):
    pipe, video = loaded
    assert video.shape == (1, 5, 16, 16, 3) and np.isfinite(video).all()
    assert pipe.default_size == 16  # the UNet's 8x8 latents through the tiny VAE's factor 2
    scheduler_config = json.loads((pipeline_dir / "scheduler" / "scheduler_config.json").read_text())
    assert pipe.scheduler == DDIMConfig.from_diffusers(scheduler_config)
    assert pipe.text_encoder.encode(["a"]).shape == (1, 77, 24)


def test_save_pretrained_round_trips_with_identical_outputs(tmp_path, pipeline_dir, loaded, first_image):
    pipe, video = loaded
    pipe.save_pretrained(str(tmp_path / "saved"))
    again = I2VPipeline.from_pretrained(str(tmp_path / "saved"))
    np.testing.assert_array_equal(again(first_image, "a red circle moves left", **SAMPLING), video)
    # What the reference code reads: the same keys, shapes and config keys per component.
    original = load_file(str(pipeline_dir / "unet" / WEIGHTS_NAME))
    saved = load_file(str(tmp_path / "saved" / "unet" / WEIGHTS_NAME))
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in original.items()}
    config = json.loads((pipeline_dir / "unet" / "config.json").read_text())
    assert set(config) - {"_use_default_values"} <= set(json.loads((tmp_path / "saved" / "unet" / "config.json").read_text()))
    vae = diffusers.AutoencoderKL.from_pretrained(tmp_path / "saved" / "vae")
    assert vae.config.scaling_factor == pipe.vae.config.scaling_factor
    transformers.CLIPTextModel.from_pretrained(str(tmp_path / "saved" / "text_encoder"))
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "saved" / "tokenizer"))
    assert (
        tokenizer("a red circle", padding="max_length", max_length=77)["input_ids"]
        == pipe.text_encoder.tokenizer(["a red circle"])[0].tolist()
    )
    scheduler = diffusers.DDIMScheduler.from_pretrained(tmp_path / "saved" / "scheduler")
    assert DDIMConfig.from_diffusers(dict(scheduler.config)) == pipe.scheduler


def test_scheduler_settings_change_the_samples(tmp_path, pipeline_dir, loaded, first_image):
    _, video = loaded
    shutil.copytree(pipeline_dir, tmp_path / "trailing")
    path = tmp_path / "trailing" / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "timestep_spacing": "trailing", "steps_offset": 0}))
    other = I2VPipeline.from_pretrained(str(tmp_path / "trailing"))(first_image, "a red circle moves left", **SAMPLING)
    assert np.abs(other - video).max() > 1e-3


@pytest.mark.parametrize("missing", ["vae", "tokenizer", "model_index.json", "scheduler/scheduler_config.json"])
def test_missing_parts_are_named(tmp_path, pipeline_dir, missing):
    shutil.copytree(pipeline_dir, tmp_path / "pipe")
    target = tmp_path / "pipe" / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(FileNotFoundError, match=str(target)):
        I2VPipeline.from_pretrained(str(tmp_path / "pipe"))


def test_other_components_cannot_be_saved_in_the_diffusers_layout(tmp_path, loaded):
    pipe, _ = loaded
    with pytest.raises(ValueError, match="HashedWordEncoder"):
        I2VPipeline(pipe.unet, pipe.params, text_encoder=HashedWordEncoder(8, 24), vae=pipe.vae).save_pretrained(str(tmp_path))


def test_sample_cli_reads_a_pipeline_folder(tmp_path, pipeline_dir, first_image):
    Image.fromarray(first_image).save(tmp_path / "first.png")
    out = tmp_path / "video"
    result = sample.main(
        [
            f"--pretrained={pipeline_dir}",
            f"--image={tmp_path / 'first.png'}",
            "--prompt=a red circle",
            "--sampling.steps=2",
            "--formats=gif",
            f"--out={out}",
            "--noprogress",
        ]
    )
    assert result["shape"] == [1, 5, 16, 16, 3]  # the UNet config's n_frames, the VAE's size
    assert result["files"] == [f"{out}.gif"]


def test_sample_cli_switches_to_the_consistency_sampler(tmp_path, pipeline_dir, first_image):
    Image.fromarray(first_image).save(tmp_path / "first.png")
    argv = [
        f"--pretrained={pipeline_dir}",
        f"--image={tmp_path / 'first.png'}",
        "--prompt=a red circle",
        "--formats=gif",
        "--noprogress",
        "--sampling.frameinit=none",
    ]
    lcm = sample.main(argv + ["--sampling.sampler=lcm", f"--out={tmp_path / 'lcm'}"])  # 4 steps, no guidance
    ddim = sample.main(argv + ["--sampling.steps=4", "--sampling.text_guidance=1", f"--out={tmp_path / 'ddim'}"])
    assert (lcm["sampling"]["steps"], lcm["sampling"]["text_guidance"]) == (4, 1.0)
    assert lcm["shape"] == ddim["shape"] == [1, 5, 16, 16, 3]
    videos = [iio.imread(tmp_path / f"{name}.gif", index=None) for name in ("lcm", "ddim")]
    np.testing.assert_array_equal(videos[0][0], videos[1][0])  # the first frame is the input's
    assert not np.array_equal(videos[0][1:], videos[1][1:])
