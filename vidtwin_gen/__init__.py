"""vidtwin-gen: latent video diffusion on VidTwin's decoupled structure/dynamics latents."""

import importlib

__version__ = "0.1.0"
__all__ = ["AutoencoderVidTwin", "VidTwinTransformer3DModel", "VidTwinPipeline", "VidTwinPipelineOutput"]

# Imported on first use (PEP 562), so `vidtwin-gen --help` and light submodules do not pay for diffusers.
# diffusers' pipeline loader finds a component's loading method by looking its base class up in the
# component's top-level package (`vidtwin_gen.ModelMixin`), so the base classes are exported here by name.
_LAZY = {
    "AutoencoderVidTwin": ".models",
    "VidTwinTransformer3DModel": ".models",
    "VidTwinPipeline": ".pipelines",
    "VidTwinPipelineOutput": ".pipelines",
    "ModelMixin": "diffusers",
    "ConfigMixin": "diffusers",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
