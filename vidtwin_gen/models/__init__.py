from .autoencoder_vidtwin import VIDTWIN_PRESETS, AutoencoderVidTwin, VidTwinEncoderOutput

__all__ = ["AutoencoderVidTwin", "VidTwinEncoderOutput", "VIDTWIN_PRESETS"]
