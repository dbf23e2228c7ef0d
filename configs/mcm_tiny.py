"""MCM distillation of a `configs/tiny.py` teacher on this CPU: a LoRA student for 1-8-step
sampling, its frame discriminator fed clean moving-shapes frames while the videos are the teacher's
(degraded ones when the teacher was trained with data.dataset.quality="degraded", MCM's setting of
low-quality videos + high-quality images).

  python launch/distill.py --config=configs/mcm_tiny.py --workdir=runs/mcm_tiny --config.teacher=runs/tiny

MCM's setting on this CPU (docs/mcm.md's degraded-video table): a teacher on degraded videos, then
the student, sharper and without the watermark:

  python launch/train.py --config=configs/tiny.py --workdir=runs/tiny_degraded --config.data.dataset.quality=degraded
  python launch/distill.py --config=configs/mcm_tiny.py --workdir=runs/mcm_degraded --config.teacher=runs/tiny_degraded \
      --config.distill.steps=1000 --config.distill.time_limit_minutes=0
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    # A pretraining workdir, one of its checkpoints, or a params export.
    config.teacher = "runs/tiny"
    # Overrides of the teacher's data section (e.g. dict(dir=...) when the dataset moved).
    config.video_data = ml_collections.ConfigDict()
    # The discriminator's real images: frames of clean moving-shapes videos with the teacher's
    # data.dataset settings, overridden by `dataset` (other videos: seed 1), or source="image_text"
    # with dir= a folder from launch/build_dataset.py --layout images.
    config.images = ml_collections.ConfigDict(
        dict(
            source="moving_shapes",
            dir="data/moving_shapes",
            dataset=dict(train_examples=500, test_examples=8, seed=1),
            crop_scale=(1.0, 1.0),  # whole frames: a crop upscaled from 32 px would teach blur as real
            # Encoded and decoded by the teacher's codec first: the block DCT keeps 4 of each 4x4
            # block's 16 frequencies, so raw frames differ from anything the student can decode.
            through_codec=True,
        )
    )
    # A small frozen ViT with random weights on CPU; at scale kind="dinov2", dir=<launch/convert_backbone.py folder>.
    config.backbone = ml_collections.ConfigDict(dict(kind="vit", image_size=32, patch_size=4, width=64, depth=4, heads=4, hooks=(1, 3)))
    # jax_i2v.distill.step.MCMConfig: MCM's settings, with target guidance scaled down to w in [1, 2]
    # (CFG 2-3), set when tiny sampled at 2; for the teacher sampled at 1.25, w = 0.25 trades a lower
    # motion error for a higher fvd_proxy (docs/mcm.md).
    # The consistency loss on raw latents, not MCM's learnt motion head: the head keeps only what it
    # learns to keep, and its students were worse (docs/mcm.md).
    # The discriminator as MCM's would not learn here (hinge loss at chance): DiffAugment's colour
    # jitter and cutout swamp a 32-px frame's blur, noise and watermark, and the tiny teacher's
    # caption embeddings as the projection's condition stall it; so no augmentation, one fixed
    # condition and a 10x learning rate (docs/mcm.md).
    # target="ema" (LCM's) is the one that takes a 10x student learning rate: with MCM's
    # stop-gradient target, gen_lr=1e-3 drives the student off the teacher's ODE (docs/mcm.md).
    config.mcm = ml_collections.ConfigDict(
        dict(
            num_solver_steps=50,
            timestep_scaling=4.0,
            guidance_min=1.0,
            guidance_max=2.0,
            loss_type="huber",
            huber_c=0.001,
            motion="raw",
            head_ema_decay=0.95,
            target="stop_gradient",
            target_ema_decay=0.95,
            lora_rank=16,
            lora_alpha=16.0,
            mixed_trajectory=0.5,
            adversarial_weight=1.0,
            disc_frames=2,
            disc_augment="",
            disc_condition="none",
            gp_weight=1e-5,
        )
    )
    config.distill = ml_collections.ConfigDict(
        dict(
            batch_size=4,
            steps=2000,
            seed=0,
            log_every=10,
            checkpoint_every=200,
            keep_checkpoints=3,
            time_limit_minutes=0.0,
            gen_lr=1e-4,
            disc_lr=1e-3,
        )
    )
    # Attention kernels: auto | xla | blocked | splash | cudnn; auto picks per platform of the mesh's
    # devices (CPU blocked, TPU splash for spatial attention, GPU cuDNN where it runs).
    config.model = ml_collections.ConfigDict(dict(attention="auto"))
    config.mesh = ml_collections.ConfigDict(dict(ici=dict(data=-1, fsdp=1, tensor=1), dcn=dict()))
    config.sharding_rules = ml_collections.ConfigDict()
    config.tensorboard = True
    # JAX's persistent compilation cache, so restarts skip compiling: "" WORKDIR/compilation_cache, "none" off, or a folder.
    config.compilation_cache_dir = ""
    # XLA's optimisation level: "" the platform's default, or O0-O3; O1 halves the released step's
    # TPU compile time and host memory, its step speed unmeasured (docs/scaling.md).
    config.xla_optimization_level = ""
    return config
