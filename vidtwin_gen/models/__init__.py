from .autoencoder_vidtwin import VIDTWIN_PRESETS, AutoencoderVidTwin, VidTwinEncoderOutput
from .transformer_vidtwin import VidTwinTransformer3DModel

__all__ = ["AutoencoderVidTwin", "VidTwinEncoderOutput", "VIDTWIN_PRESETS", "VidTwinTransformer3DModel"]
