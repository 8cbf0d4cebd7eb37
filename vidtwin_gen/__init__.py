"""vidtwin-gen: latent video diffusion on VidTwin's decoupled structure/dynamics latents."""

from .models import AutoencoderVidTwin

__version__ = "0.1.0"
__all__ = ["AutoencoderVidTwin"]
