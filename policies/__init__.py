"""Torch planners: the rolling-buffer denoiser, its trainer, checkpoints and baselines."""
