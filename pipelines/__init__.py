"""Diffusers pipelines, installed as `vidtwin_gen.pipelines`."""

from .pipeline_vidtwin import (
    VidTwinPipeline,
    VidTwinPipelineOutput,
    check_remote_code_shim,
    encode_text,
    remote_code_shim_matches,
)

__all__ = [
    "VidTwinPipeline",
    "VidTwinPipelineOutput",
    "check_remote_code_shim",
    "encode_text",
    "remote_code_shim_matches",
]
