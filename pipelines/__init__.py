"""Diffusers pipelines, installed as `vidtwin_gen.pipelines`."""

from .pipeline_vidtwin import VidTwinPipeline, VidTwinPipelineOutput, encode_text

__all__ = ["VidTwinPipeline", "VidTwinPipelineOutput", "encode_text"]
