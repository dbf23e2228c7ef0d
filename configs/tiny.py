"""A CPU-sized ConsistI2V UNet (pixel space, 3 channels) for tests and demos: every
architectural feature of the released model at ~2M params."""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.unet = ml_collections.ConfigDict(
        dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            attention_head_dim=(1, 2, 2),
            cross_attention_dim=32,
            norm_num_groups=8,
            norm_eps=1e-5,
            flip_sin_to_cos=True,
            freq_shift=0,
            downsample_padding=1,
            use_linear_projection=True,
            upcast_attention=False,
            sample_size=32,
            use_temporal=True,
            n_frames=8,
            n_temp_heads=2,
            first_frame_condition_mode="concat",
            augment_temporal_attention=True,
            temp_pos_embedding="rotary",
            use_frame_stride_condition=True,
        )
    )
    config.data = ml_collections.ConfigDict(
        dict(frames=8, resolution=32, latent_size=32, latent_channels=3, text_len=8)
    )
    config.dtype = "float32"
    config.param_dtype = "float32"
    return config
