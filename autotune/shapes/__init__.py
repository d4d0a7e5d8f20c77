"""The shapes world: rendered scenes with known truth, a small text-to-image model trained on them, and edit tasks.

It is a test instrument and an offline demo, not a substitute for Stable Diffusion (see docs/shapes.md).
"""
