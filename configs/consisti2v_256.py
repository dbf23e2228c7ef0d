"""The released ConsistI2V model: SD-2.1-base spatial UNet inflated for 16 frames at 256x256.

Latents are 4 x 32 x 32 (VAE factor 8); text is OpenCLIP-H, 77 x 1024. ~1250M params
in the reference state dict (1240M here: the reference's dead weights are not materialised).
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
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
        dict(frames=16, resolution=256, latent_size=32, latent_channels=4, text_len=77)
    )
    config.dtype = "bfloat16"
    config.param_dtype = "float32"
    return config
