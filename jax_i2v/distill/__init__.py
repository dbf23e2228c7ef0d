"""Motion Consistency Model (MCM) distillation of the image-to-video UNet into few-step sampling.

consistency.py: the consistency-distillation maths (boundary conditions, DDIM solver grid, LCM
timesteps, losses); motion.py: the motion representations the consistency loss compares; lora.py:
the student as teacher + low-rank deltas, a pure params transform.
"""
