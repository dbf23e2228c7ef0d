"""MCM distillation of the released model (`configs/consisti2v_256.py`) as MCM's scripts set it up
(spec mcm.md section 5.1): a LoRA student (r = alpha = 64) for 1-8-step sampling, the learnt motion
representation, mixed trajectories, and a projected discriminator on a frozen DINOv2 ViT-S/14 at
224 px fed high-quality images.

  python launch/distill.py --config=configs/mcm_256.py --workdir=runs/mcm_256 \
      --config.teacher=runs/consisti2v --config.images.dir=data/images/laion_aesthetic/1.0.0 \
      --config.backbone.dir=checkpoints/dinov2_vits14

`images.dir` is an image-text folder from `launch/build_dataset.py --layout images`;
`backbone.dir` a DINOv2 folder from `launch/convert_backbone.py`. Sized before renting a pod
(its teacher given as an experiment config, no weights read):

  python launch/aot_compile.py --config=configs/mcm_256.py --teacher_config=configs/consisti2v_256.py \
      --topology=v5p:2x2x1 --mesh=fsdp=4 --per_device_batch=1
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    # A pretraining workdir, one of its checkpoints, or a params export of consisti2v_256.
    config.teacher = "runs/consisti2v"
    config.video_data = ml_collections.ConfigDict()
    config.images = ml_collections.ConfigDict(
        dict(source="image_text", dir="data/images/laion_aesthetic/1.0.0", crop_scale=(0.5, 1.0), through_codec=False)
    )
    config.backbone = ml_collections.ConfigDict(dict(kind="dinov2", dir="checkpoints/dinov2_vits14", hooks=(2, 5, 8, 11)))
    # jax_i2v.distill.step.MCMConfig: MCM's scripts' settings.
    config.mcm = ml_collections.ConfigDict(
        dict(
            num_solver_steps=50,
            timestep_scaling=4.0,
            guidance_min=5.0,
            guidance_max=15.0,
            loss_type="huber",
            huber_c=0.001,
            motion="learn",
            head_ema_decay=0.95,
            target="stop_gradient",
            lora_rank=64,
            lora_alpha=64.0,
            mixed_trajectory=0.5,
            adversarial_weight=1.0,
            disc_frames=2,
            disc_condition="text",
            gp_weight=1e-5,
        )
    )
    config.distill = ml_collections.ConfigDict(
        dict(
            batch_size=128,
            steps=38_554,  # two nominal WebVid epochs at batch 128 (spec mcm.md 5.1)
            seed=453645634,
            log_every=50,
            checkpoint_every=500,
            keep_checkpoints=3,
            time_limit_minutes=0.0,
            gen_lr=5e-6,
            disc_lr=1e-4,
        )
    )
    config.model = ml_collections.ConfigDict(dict(attention="auto"))
    config.mesh = ml_collections.ConfigDict(dict(ici=dict(data=1, fsdp=-1, tensor=1), dcn=dict()))
    config.sharding_rules = ml_collections.ConfigDict()
    config.tensorboard = True
    config.compilation_cache_dir = ""
    # XLA's optimisation level: "" the platform's default, or O0-O3; O1 halves the released step's
    # TPU compile time and host memory, its step speed unmeasured (docs/scaling.md).
    config.xla_optimization_level = ""
    return config
