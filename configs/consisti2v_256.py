"""The released ConsistI2V model: SD-2.1-base spatial UNet inflated for 16 frames at 256x256.

Latents are 4 x 32 x 32 (VAE factor 8); text is OpenCLIP-H, 77 x 1024. ~1250M params
in the reference state dict (1240M here: the reference's dead weights are not materialised).

Pretraining as the paper did reads a local copy of stabilityai/stable-diffusion-2-1-base (its
vae/, text_encoder/, tokenizer/ and unet/ folders; nothing is downloaded):

  python launch/train.py --config=configs/consisti2v_256.py --workdir=runs/consisti2v \
      --config.pretrained_dir=/data/stable-diffusion-2-1-base --config.data.dir=data/video_text/webvid/1.0.0

The optimisation and objective are the reference's training.yaml (section 2 of the spec).
"""

import ml_collections

from jax_i2v.pipeline.sampling_config import SamplingConfig


def get_config():
    config = ml_collections.ConfigDict()
    # Where the SD-2.1-base folders are; the VAE, CLIP and inflation paths below follow it.
    config.pretrained_dir = ml_collections.FieldReference("checkpoints/stable-diffusion-2-1-base")
    pretrained = config.get_ref("pretrained_dir")
    config.unet = ml_collections.ConfigDict(
        dict(
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            attention_head_dim=(5, 10, 20, 20),  # number of spatial heads (diffusers naming); head width 64
            cross_attention_dim=1024,
            norm_num_groups=32,
            norm_eps=1e-5,
            flip_sin_to_cos=True,
            freq_shift=0,
            downsample_padding=1,
            use_linear_projection=True,
            upcast_attention=False,
            sample_size=32,
            use_temporal=True,
            n_frames=16,
            n_temp_heads=8,
            first_frame_condition_mode="concat",
            augment_temporal_attention=True,
            temp_pos_embedding="rotary",
            use_frame_stride_condition=True,
        )
    )
    config.data = ml_collections.ConfigDict(
        # WebVid as the reference reads it: a dataset built from its JSONL + video folder by
        # launch/build_dataset.py (dir: the printed folder), or its latents (source "latents").
        dict(
            source="videos",
            dir="data/video_text/webvid/1.0.0",
            frames=16,
            resolution=256,
            latent_size=32,
            latent_channels=4,
            text_len=77,
            stride_range=(1, 5),
            random_flip=True,
            crop="center",
            crop_scale=(0.75, 1.0),
            shorten=True,
            read_threads=16,
            num_workers=8,
        )
    )
    config.codec = ml_collections.ConfigDict(dict(kind="autoencoder_kl", dir=pretrained + "/vae", decode_chunk=8))
    config.text_encoder = ml_collections.ConfigDict(
        dict(kind="clip", dir=pretrained + "/text_encoder", tokenizer_dir=pretrained + "/tokenizer")
    )
    config.schedule = ml_collections.ConfigDict(
        dict(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000, rescale_betas_zero_snr=False)
    )
    config.objective = ml_collections.ConfigDict(
        dict(prediction_type="epsilon", noise_alpha=1.0, first_frame_dropout=0.1, text_dropout=0.1)
    )
    config.optim = ml_collections.ConfigDict(
        dict(
            learning_rate=5e-5,
            schedule="constant",
            warmup_steps=0,
            total_steps=200_000,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=1e-2,
            grad_clip_norm=0.5,
        )
    )
    config.train = ml_collections.ConfigDict(
        dict(
            batch_size=24,
            steps=200_000,
            seed=42,
            log_every=50,
            checkpoint_every=2000,
            keep_checkpoints=3,
            remat_policy="block",
            grad_accum_steps=1,
            ema_decay=0.0,
            temporal_mixer_init=1.0,
            init_from_image_unet=pretrained + "/unet",
            sample_every=0,
            sample_videos=2,
            sample_steps=50,
            time_limit_minutes=0.0,
        )
    )
    # The release's inference settings: SamplingConfig's defaults (50 DDIM steps, text guidance 7.5, FrameInit).
    config.sampling = SamplingConfig().to_config_dict()
    # Attention kernels: auto | xla | blocked | splash | cudnn; auto picks per platform of the mesh's
    # devices (CPU blocked, TPU splash for spatial attention, GPU cuDNN where it runs).
    config.model = ml_collections.ConfigDict(dict(attention="auto"))
    config.mesh = ml_collections.ConfigDict(dict(ici=dict(data=1, fsdp=-1, tensor=1), dcn=dict()))
    config.sharding_rules = ml_collections.ConfigDict()
    config.tensorboard = True
    # JAX's persistent compilation cache, so restarts skip compiling: "" WORKDIR/compilation_cache, "none" off, or a folder.
    config.compilation_cache_dir = ""
    # XLA's optimisation level: "" the platform's default, or O0-O3; O1 halves the released step's
    # TPU compile time and host memory, its step speed unmeasured (docs/scaling.md).
    config.xla_optimization_level = ""
    config.dtype = "bfloat16"
    config.param_dtype = "float32"
    return config
