"""vidtwin-gen: latent video diffusion on VidTwin's decoupled structure/dynamics latents."""

# diffusers' pipeline loader finds a component's loading method by looking its base class up in the
# component's top-level package (`vidtwin_gen.ModelMixin`), so the base classes are imported here by name.
from diffusers import ConfigMixin, ModelMixin  # noqa: F401

from .models import AutoencoderVidTwin, VidTwinTransformer3DModel
from .pipelines import VidTwinPipeline, VidTwinPipelineOutput

__version__ = "0.1.0"
__all__ = ["AutoencoderVidTwin", "VidTwinTransformer3DModel", "VidTwinPipeline", "VidTwinPipelineOutput"]
