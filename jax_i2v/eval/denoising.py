"""How well a model denoises real clips, noise level by noise level.

Sample quality hides where a diffusion model is weak; this measures it directly. Held-out clips are
noised to each timestep t with the training noise (pyoco mixed) and the model's estimates of the
clean clip and of the noise are compared with the truth. A model that has not learned the
low-noise end (noise MSE near 1 at small t) ends every sample with that noise left in.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from jax_i2v.diffusion.schedules import NoiseSchedule, add_noise, pyoco_mixed_noise, split_prediction


def denoising_errors(
    apply_fn: Callable[..., jax.Array],
    schedule: NoiseSchedule,
    prediction_type: str,
    clean: jax.Array,
    first_frame: Optional[jax.Array],
    text: jax.Array,
    frame_stride: jax.Array,
    timesteps: Sequence[int],
    rng: jax.Array,
    noise_alpha: float = 1.0,
    other_texts: Optional[Mapping[str, jax.Array]] = None,
) -> dict[int, dict[str, float]]:
    """{t: {"x0_mse", "eps_mse"}} averaged over the batch, for each t in `timesteps`.

    apply_fn(sample, timesteps, text, first_frame, frame_stride) -> model output like `sample`.
    clean: (B, F', h, w, C) the frames the model denoises (without the conditioning frame for
    first-frame-conditioned models); first_frame: (B, 1, h, w, C) or None; text: (B, L, D);
    frame_stride: (B,). The noise for t is drawn from fold_in(rng, t). Each of `other_texts`
    (name -> (B, L, D)) adds "x0_mse_NAME": the clean-clip error on the same noisy samples with
    that text instead (same shapes, so the same compiled function).
    """
    clean = jnp.asarray(clean, jnp.float32)
    batch = clean.shape[0]

    @jax.jit
    def noisy_sample(t, key):
        noise = pyoco_mixed_noise(key, clean.shape, noise_alpha)
        t_batch = jnp.full((batch,), t, jnp.int32)
        return noise, t_batch, add_noise(schedule, clean, noise, t_batch)

    @jax.jit
    def errors(noise, t_batch, noisy, text):
        output = apply_fn(noisy, t_batch, text, first_frame, frame_stride)
        x0, eps = split_prediction(schedule, noisy, output, t_batch, prediction_type)
        return jnp.mean(jnp.square(x0 - clean)), jnp.mean(jnp.square(eps - noise))

    result = {}
    for t in timesteps:
        if not 0 <= int(t) < schedule.num_train_timesteps:
            raise ValueError(f"timestep {t} is outside [0, {schedule.num_train_timesteps})")
        sample = noisy_sample(jnp.int32(t), jax.random.fold_in(rng, int(t)))
        x0_mse, eps_mse = errors(*sample, text)
        result[int(t)] = {"x0_mse": float(x0_mse), "eps_mse": float(eps_mse)}
        for name, other in (other_texts or {}).items():
            result[int(t)][f"x0_mse_{name}"] = float(errors(*sample, other)[0])
    return result
