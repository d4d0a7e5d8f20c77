"""The UNet family (Stable Diffusion 1.x / 2.x): DDIM inversion at any guidance, two-branch sampling,
Prompt-to-Prompt attention control and recorded source branches."""
