"""Helpers shared by several test files (imported as `helpers`: pytest puts tests/ on sys.path)."""

import torch


def perturb_(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Move every parameter off its init so that no path is trivially zero (zero-init projections, adaLN-Zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return model
