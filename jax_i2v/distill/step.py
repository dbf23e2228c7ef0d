"""The MCM train state and step (spec mcm.md sections 1.3, 3, 4) for the image-to-video UNet.

One jitted step encodes the raw batch (`mcm_inputs`: the codec's posterior sample of the clips,
the caption encoder, the real images' codec round trip), then does the generator update
(consistency loss on a motion representation + the adversarial loss) and the discriminator
update. The teacher, the frozen discriminator backbone and the frozen encoders' params come in as
arguments; everything trained lives in `MCMTrainState`. I2V conditioning (clean first-frame
latent, frame stride, caption) goes to teacher, student and target alike; only frames 2..F are
noised, denoised and compared.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jax_i2v.diffusion.lcm import consistency_output, solver_timesteps
from jax_i2v.diffusion.schedules import NoiseSchedule, add_noise, per_video, pyoco_mixed_noise, split_prediction
from jax_i2v.distill import lora
from jax_i2v.distill.backbone import ViT
from jax_i2v.distill.consistency import consistency_loss, ddim_solver_step, lcm_guidance, solver_previous_timesteps
from jax_i2v.distill.discriminator import (
    ALL_AUGMENTATIONS,
    ProjectedDiscriminator,
    backbone_input,
    diff_augment,
    discriminator_loss,
    feature_gradient_penalty,
    generator_loss,
    parse_augment_policy,
)
from jax_i2v.distill.motion import MOTION_REPRESENTATIONS, SpatialHead, motion_representation
from jax_i2v.models.unet import VideoUNet, apply_unet
from jax_i2v.parallel.partitioning import DEFAULT_RULES, batch_sharding, params_shardings, replicated_sharding
from jax_i2v.train.encoders import FrozenEncoders, encode_key, pixels_to_model_range
from jax_i2v.train.step import NONFINITE_METRIC, skip_nonfinite

Batch = Mapping[str, jax.Array]
TARGETS = ("stop_gradient", "ema")
DISC_CONDITIONS = ("text", "none")


@dataclasses.dataclass(frozen=True)
class MCMConfig:
    """Defaults are MCM's scripts' (spec 5.1) where they apply."""

    num_solver_steps: int = 50
    timestep_scaling: float = 4.0
    guidance_min: float = 5.0  # w ~ U[min, max], LCM form: CFG scale 1 + w
    guidance_max: float = 15.0
    loss_type: str = "huber"
    huber_c: float = 0.001
    motion: str = "learn"
    head_layers: int = 2
    head_kernel: int = 1
    head_ema_decay: float = 0.95
    target: str = "stop_gradient"  # or "ema": an EMA copy of the student
    target_ema_decay: float = 0.95
    lora_rank: int = 64  # 0: full fine-tune of the student
    lora_alpha: float = 64.0
    mixed_trajectory: float = 0.5  # probability that the clean latent is the student's one-step sample
    adversarial_weight: float = 1.0
    disc_frames: int = 2
    # DiffAugment parts applied to the discriminator's real and fake frames ("" for none).
    disc_augment: str = ALL_AUGMENTATIONS
    # "text": the projection discriminator reads each image's caption embedding (MCM); "none": one
    # fixed condition for every image, so the projection is a single learnt direction.
    disc_condition: str = "text"
    gp_weight: float = 1e-5
    student_grad_clip: float = 10.0
    noise_alpha: float = 1.0  # pyoco mixed; the distillation loop sets the teacher's training alpha

    def __post_init__(self):
        if self.motion not in MOTION_REPRESENTATIONS or self.target not in TARGETS:
            raise ValueError(
                f"motion must be one of {MOTION_REPRESENTATIONS} and target one of {TARGETS}, got {self.motion!r}, {self.target!r}"
            )
        if not 0.0 <= self.mixed_trajectory <= 1.0 or self.guidance_min > self.guidance_max or self.lora_rank < 0:
            raise ValueError(f"bad MCM settings: {self}")
        parse_augment_policy(self.disc_augment)
        if self.disc_condition not in DISC_CONDITIONS:
            raise ValueError(f"disc_condition must be one of {DISC_CONDITIONS}, got {self.disc_condition!r}")


@flax.struct.dataclass
class MCMTrainState:
    """student: LoRA deltas ({kernel path: {"a", "b"}}) or full UNet params; target: its EMA copy
    (None: the target is the stop-gradient student); head / head_ema: the motion head and its EMA
    copy (None unless motion == "learn"); disc / disc_stats: discriminator params and spectral-norm
    state; gp_weight and gp_quiet_steps drive the adaptive penalty weight."""

    step: jax.Array
    student: Any
    target: Any
    head: Any
    head_ema: Any
    disc: Any
    disc_stats: Any
    gen_opt_state: Any
    disc_opt_state: Any
    gp_weight: jax.Array
    gp_quiet_steps: jax.Array


@dataclasses.dataclass(frozen=True)
class MCMModels:
    """The modules and frozen pieces a step needs (static: part of the compiled function; the
    encoders' params come with each call)."""

    unet: VideoUNet
    schedule: NoiseSchedule
    prediction_type: str
    encoders: FrozenEncoders  # the teacher's codec and (frozen) caption encoder
    backbone: ViT
    discriminator: ProjectedDiscriminator
    head: SpatialHead
    gen_optimizer: optax.GradientTransformation
    disc_optimizer: optax.GradientTransformation


def make_models(unet, schedule, prediction_type, encoders, backbone, config: MCMConfig, gen_lr=5e-6, disc_lr=1e-4) -> MCMModels:
    return MCMModels(
        unet=unet,
        schedule=schedule,
        prediction_type=prediction_type,
        encoders=encoders,
        backbone=backbone,
        discriminator=ProjectedDiscriminator(num_heads=len(backbone.config.hooks)),
        head=SpatialHead(num_layers=config.head_layers, kernel_size=config.head_kernel),
        gen_optimizer=optax.adamw(gen_lr, weight_decay=0.0),
        disc_optimizer=optax.adamw(disc_lr, weight_decay=0.0),
    )


def student_params(state: MCMTrainState, teacher: Any, config: MCMConfig) -> Any:
    """The student's UNet params: teacher + LoRA deltas (merged), or the full copy."""
    if config.lora_rank:
        return lora.merge(teacher, state.student, config.lora_alpha / config.lora_rank)
    return state.student


def init_state(rng, teacher, models: MCMModels, config: MCMConfig, latent_shape, condition_dim: int) -> MCMTrainState:
    """Fresh state; `latent_shape` is one video's (F, h, w, C), `condition_dim` the width of the
    discriminator's text condition."""
    lora_key, head_key, disc_key = jax.random.split(rng, 3)
    student = lora.init_lora(teacher, config.lora_rank, lora_key) if config.lora_rank else jax.tree_util.tree_map(jnp.copy, teacher)
    head = ema = None
    if config.motion == "learn":
        head = models.head.init(head_key, jnp.zeros((1,) + tuple(latent_shape)))["params"]
        ema = jax.tree_util.tree_map(jnp.copy, head)
    cfg = models.backbone.config
    features = [jnp.zeros((2, cfg.tokens, cfg.width))] * len(cfg.hooks)
    variables = models.discriminator.init(disc_key, features, jnp.zeros((2, condition_dim)), update_stats=False)
    trained = {"student": student, "head": head}
    return MCMTrainState(
        step=jnp.zeros((), jnp.int32),
        student=student,
        target=jax.tree_util.tree_map(jnp.copy, student) if config.target == "ema" else None,
        head=head,
        head_ema=ema,
        disc=variables["params"],
        disc_stats=variables["batch_stats"],
        gen_opt_state=models.gen_optimizer.init(trained),
        disc_opt_state=models.disc_optimizer.init(variables["params"]),
        gp_weight=jnp.asarray(config.gp_weight, jnp.float32),
        gp_quiet_steps=jnp.zeros((), jnp.int32),
    )


def _denoise(models: MCMModels, params, x, t, text, first, stride):
    """(x0, eps) of the UNet's prediction for x at per-video timesteps t."""
    out = apply_unet(models.unet, params, x, t, text, first, stride)
    return split_prediction(models.schedule, x, out, t, models.prediction_type)


def _frames_to_images(models: MCMModels, frozen, video: jax.Array, frames: jax.Array) -> jax.Array:
    """(B, F, h, w, C) latents, frame indices (k,) -> (B * k, H, W, 3) decoded images."""
    picked = jnp.take(video, frames, axis=1)
    return models.encoders.decode_frames(frozen, picked.reshape((-1,) + picked.shape[2:]))


def _disc_logits(models: MCMModels, disc, stats, backbone_params, images, condition):
    """Discriminator logits of preprocessed images; returns (logits, updated spectral-norm state)."""
    features = models.backbone.apply({"params": backbone_params}, images)
    return models.discriminator.apply(
        {"params": disc, "batch_stats": stats}, features, condition, update_stats=True, mutable=["batch_stats"]
    )


def discriminator_condition(embeddings: jax.Array, config: MCMConfig, repeats: int = 1) -> jax.Array:
    """(N, D) caption embeddings -> (N * repeats, D) discriminator conditions."""
    if config.disc_condition == "none":
        embeddings = jnp.full_like(embeddings, 1.0 / embeddings.shape[-1] ** 0.5)
    return jnp.repeat(embeddings, repeats, axis=0)


def _augmented(models: MCMModels, rng, images, policy: str):
    return backbone_input(diff_augment(rng, images, policy), models.backbone.config.image_size)


def mcm_losses(state: MCMTrainState, trained, teacher, backbone_params, frozen, batch: Batch, rng, models: MCMModels, config: MCMConfig):
    """Generator losses for trainable {"student", "head"}: (total, (metrics, student prediction,
    updated spectral-norm state))."""
    latents = batch["latents"].astype(jnp.float32)
    first, clean = latents[:, :1], latents[:, 1:]
    text, null_text, stride = batch["text"], batch["null_text"], batch["frame_stride"]
    b = clean.shape[0]
    keys = jax.random.split(rng, 9)
    params = student_params(state.replace(student=trained["student"]), teacher, config)
    frozen_student = jax.lax.stop_gradient(params)

    # Mixed trajectories: the whole batch starts from the student's one-step sample instead.
    grid = jnp.asarray(solver_timesteps(models.schedule.num_train_timesteps, config.num_solver_steps))
    last = jnp.full((b,), grid[-1])
    use_generated = jax.random.bernoulli(keys[0], config.mixed_trajectory)

    def generated(_):
        noise = pyoco_mixed_noise(keys[1], clean.shape, config.noise_alpha)
        return _denoise(models, frozen_student, noise, last, text, first, stride)[0]

    clean = jax.lax.cond(use_generated, generated, lambda _: clean, None)

    index = jax.random.randint(keys[2], (b,), 0, config.num_solver_steps)
    t = grid[index]
    t_prev = jnp.asarray(solver_previous_timesteps(models.schedule.num_train_timesteps, config.num_solver_steps))[index]
    noise = pyoco_mixed_noise(keys[3], clean.shape, config.noise_alpha)
    noisy = add_noise(models.schedule, clean, noise, t)
    noisy = jnp.where(per_video(index == config.num_solver_steps - 1, noisy), noise, noisy)  # t = 999: pure noise

    x0, _ = _denoise(models, params, noisy, t, text, first, stride)
    prediction = consistency_output(noisy, x0, t, config.timestep_scaling)

    x0_c, eps_c = _denoise(models, teacher, noisy, t, text, first, stride)
    x0_u, eps_u = _denoise(models, teacher, noisy, t, null_text, first, stride)
    w = jax.random.uniform(keys[4], (b,), minval=config.guidance_min, maxval=config.guidance_max)
    previous = ddim_solver_step(models.schedule, lcm_guidance(x0_c, x0_u, w), lcm_guidance(eps_c, eps_u, w), index, config.num_solver_steps)
    target_params = frozen_student if state.target is None else student_params(state.replace(student=state.target), teacher, config)
    x0_target, _ = _denoise(models, target_params, jax.lax.stop_gradient(previous), t_prev, text, first, stride)
    target = jax.lax.stop_gradient(consistency_output(previous, x0_target, t_prev, config.timestep_scaling))

    ours = motion_representation(prediction, config.motion, models.head, trained["head"])
    theirs = motion_representation(target, config.motion, models.head, state.head_ema)
    cd_loss = consistency_loss(ours, jax.lax.stop_gradient(theirs), config.loss_type, config.huber_c)

    frames = jax.random.choice(keys[5], clean.shape[1], (config.disc_frames,), replace=False)
    fake = _augmented(models, keys[6], _frames_to_images(models, frozen, prediction, frames), config.disc_augment)
    condition = discriminator_condition(batch["condition"], config, config.disc_frames)
    logits, stats = _disc_logits(models, state.disc, state.disc_stats, backbone_params, fake, condition)
    adv_loss = generator_loss(logits)
    metrics = {"cd_loss": cd_loss, "g_adv_loss": adv_loss, "generated_trajectory": use_generated.astype(jnp.float32)}
    return cd_loss + config.adversarial_weight * adv_loss, (metrics, prediction, stats["batch_stats"])


def mcm_step(state: MCMTrainState, teacher, backbone_params, frozen, batch: Batch, rng, models: MCMModels, config: MCMConfig):
    """One generator update, then one discriminator update on an encoded batch (`mcm_inputs`):
    (state, metrics). `frozen`: the encoders' params (the fake frames are decoded)."""
    rng = jax.random.fold_in(rng, state.step)
    gen_key, disc_key = jax.random.split(rng)
    trained = {"student": state.student, "head": state.head}
    (gen_loss, (metrics, prediction, stats)), grads = jax.value_and_grad(mcm_losses, argnums=1, has_aux=True)(
        state, trained, teacher, backbone_params, frozen, batch, gen_key, models, config
    )
    student_grads, _ = optax.clip_by_global_norm(config.student_grad_clip).update(grads["student"], optax.EmptyState())
    grads = {**grads, "student": student_grads}
    updates, gen_opt_state = models.gen_optimizer.update(grads, state.gen_opt_state, trained)
    trained = optax.apply_updates(trained, updates)
    head_ema = state.head_ema
    if head_ema is not None:
        head_ema = optax.incremental_update(trained["head"], head_ema, step_size=1.0 - config.head_ema_decay)
    target = state.target
    if target is not None:
        target = optax.incremental_update(trained["student"], target, step_size=1.0 - config.target_ema_decay)

    # Discriminator: the detached prediction (new frames) against real high-quality images.
    keys = jax.random.split(disc_key, 4)
    frames = jax.random.choice(keys[0], prediction.shape[1], (config.disc_frames,), replace=False)
    fake = _augmented(models, keys[1], _frames_to_images(models, frozen, jax.lax.stop_gradient(prediction), frames), config.disc_augment)
    real = _augmented(models, keys[2], batch["real_images"], config.disc_augment)
    condition = discriminator_condition(batch["condition"], config, config.disc_frames)

    def disc_loss_fn(disc, stats):
        real_logits, stats = _disc_logits(
            models, disc, stats, backbone_params, real, discriminator_condition(batch["real_condition"], config)
        )
        fake_logits, stats = _disc_logits(models, disc, stats["batch_stats"], backbone_params, fake, condition)
        stats = stats["batch_stats"]

        def features(images):
            return models.backbone.apply({"params": backbone_params}, images)

        def logits(feats):
            return models.discriminator.apply({"params": disc, "batch_stats": stats}, feats, condition, update_stats=False)

        penalty = feature_gradient_penalty(keys[3], real, fake, features, logits)
        loss = discriminator_loss(real_logits, fake_logits)
        return loss + state.gp_weight * penalty, (loss, penalty, stats)

    (_, (d_loss, penalty, stats)), disc_grads = jax.value_and_grad(disc_loss_fn, has_aux=True)(state.disc, stats)
    disc_updates, disc_opt_state = models.disc_optimizer.update(disc_grads, state.disc_opt_state, state.disc)
    grow = (state.gp_quiet_steps > 500) & (penalty >= 100.0)
    student_grad_norm, disc_grad_norm = optax.tree.norm(grads["student"]), optax.tree.norm(disc_grads)
    new_state = state.replace(
        step=state.step + 1,
        student=trained["student"],
        target=target,
        head=trained["head"],
        head_ema=head_ema,
        disc=optax.apply_updates(state.disc, disc_updates),
        disc_stats=stats,
        gen_opt_state=gen_opt_state,
        disc_opt_state=disc_opt_state,
        gp_weight=jnp.where(grow, state.gp_weight * 5.0, state.gp_weight),
        gp_quiet_steps=jnp.where(grow, 0, state.gp_quiet_steps + 1),
    )
    new_state, nonfinite = skip_nonfinite(state, new_state, gen_loss, d_loss, penalty, student_grad_norm, disc_grad_norm)
    metrics = {
        **metrics,
        "g_loss": gen_loss,
        "d_loss": d_loss,
        "gp": penalty,
        "student_grad_norm": student_grad_norm,
        NONFINITE_METRIC: nonfinite,
    }
    return new_state, metrics


def mcm_inputs(
    encoders: FrozenEncoders, frozen, raw: Batch, null_caption: jax.Array, rng: jax.Array, real_through_codec: bool = False
) -> dict[str, jax.Array]:
    """The raw batch -> what `mcm_step` reads, on the devices.

    raw: "video" (B, F, H, W, 3) pixels, CAPTIONS (B, ...) (CAPTIONS: `encoders.caption_key`, token
    ids or embeddings), "frame_stride" (B,), "real_images" (N, R, R, 3) pixels and
    "real_" + CAPTIONS (N, ...); null_caption: the empty caption's ids or embedding.
    Returns "latents" (B, F, h, w, C), a posterior sample drawn from `rng`; "text" and
    "null_text" (B, L, D); "condition" (B, D), the captions' mean embedding, which conditions the
    discriminator; "real_images" (N, R, R, 3) in [-1, 1], through the codec (encoded to the
    posterior mean and decoded) with `real_through_codec`; "real_condition" (N, D).
    """
    key = encoders.caption_key
    text = encoders.caption_embeddings(frozen, raw[key])
    null_text = encoders.caption_embeddings(frozen, jnp.asarray(null_caption)[None])[0]
    real = pixels_to_model_range(raw["real_images"])
    if real_through_codec:
        # A lossy codec (the CPU configs' block DCT) drops detail the student cannot draw; real
        # images that keep it would teach the discriminator the codec, not the videos' flaws.
        real = encoders.decode_frames(frozen, encoders.encode_frames(frozen, real, None))
    return {
        "latents": encoders.encode_video(frozen, raw["video"], rng),
        "text": text,
        "null_text": jnp.broadcast_to(null_text, text.shape),
        "frame_stride": raw["frame_stride"],
        "condition": text.mean(axis=1),
        "real_images": jax.lax.stop_gradient(real),
        "real_condition": encoders.caption_embeddings(frozen, raw["real_" + key]).mean(axis=1),
    }


def make_mcm_step(
    models: MCMModels,
    config: MCMConfig,
    mesh: Mesh,
    state_sharding,
    teacher_sharding,
    backbone_sharding,
    frozen_sharding,
    rules=DEFAULT_RULES,
    real_through_codec: bool = False,
):
    """step(state, raw_batch, teacher, backbone_params, frozen_params, null_caption, rng) ->
    (state, metrics) jitted on `mesh` (and `step.lower` with the same arguments): the raw batch
    (`mcm_inputs`) split over data x fsdp and encoded in the step, the encoders' params placed as
    `frozen_sharding`, the state donated, every random draw from fold_in(rng, step) (the same
    whatever the mesh). A non-finite loss or gradient norm skips the whole update (`skip_nonfinite`)."""
    replicated = replicated_sharding(mesh)

    def constrained(batch):
        return {k: jax.lax.with_sharding_constraint(v, batch_sharding(mesh, v.ndim, rules)) for k, v in batch.items()}

    def step(state, raw, teacher, backbone_params, frozen, null_caption, rng):
        key = encode_key(jax.random.fold_in(rng, state.step))
        batch = constrained(mcm_inputs(models.encoders, frozen, raw, null_caption, key, real_through_codec))
        return mcm_step(state, teacher, backbone_params, frozen, batch, rng, models=models, config=config)

    compiled = {}

    def jitted(batch):
        signature = tuple(sorted((k, jnp.ndim(v)) for k, v in batch.items()))
        if signature not in compiled:
            batch_shardings = {k: batch_sharding(mesh, jnp.ndim(v), rules) for k, v in batch.items()}
            compiled[signature] = jax.jit(
                step,
                in_shardings=(
                    state_sharding,
                    batch_shardings,
                    teacher_sharding,
                    backbone_sharding,
                    frozen_sharding,
                    replicated,
                    replicated,
                ),
                out_shardings=(state_sharding, replicated),
                donate_argnums=(0,),
            )
        return compiled[signature]

    def run(state, batch, *args):
        """args: teacher, backbone_params, frozen_params, null_caption, rng."""
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return jitted(batch)(state, batch, *args)

    def lower(state, batch, *args):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return jitted(batch).lower(state, batch, *args)

    run.lower = lower
    return run


def mcm_state_shardings(abstract: MCMTrainState, models: MCMModels, mesh: Mesh, rules=DEFAULT_RULES) -> MCMTrainState:
    """Trained trees sharded by the same logical rules as pretraining; optimizer moments follow."""
    replicated = replicated_sharding(mesh)

    def shard(tree):
        return None if tree is None else params_shardings(tree, mesh, rules)

    trained = {"student": shard(abstract.student), "head": shard(abstract.head)}

    def opt_shardings(optimizer, opt_state, params):
        return optax.tree_map_params(optimizer, lambda _, s: s, opt_state, params, transform_non_params=lambda _: replicated)

    return MCMTrainState(
        step=replicated,
        student=trained["student"],
        target=shard(abstract.target),
        head=trained["head"],
        head_ema=shard(abstract.head_ema),
        disc=shard(abstract.disc),
        disc_stats=jax.tree_util.tree_map(lambda _: replicated, abstract.disc_stats),
        gen_opt_state=opt_shardings(models.gen_optimizer, abstract.gen_opt_state, trained),
        disc_opt_state=opt_shardings(models.disc_optimizer, abstract.disc_opt_state, shard(abstract.disc)),
        gp_weight=replicated,
        gp_quiet_steps=replicated,
    )
