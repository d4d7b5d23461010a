"""Privacy of shared gradients: pFedHT's data/label transformation (paper 003, Algorithm 1), the
DLG / iDLG gradient-inversion attacks, and the `raysim privacy-eval` evaluation.

Modules (import them directly; this package imports nothing so that the CLI starts fast):
``gradients`` (loss, gradient, DP mechanism), ``transform``, ``attack``, ``quality`` (PSNR/SSIM),
``evaluate`` (the experiment, table and image grid), ``cli`` (the typer command).
"""
