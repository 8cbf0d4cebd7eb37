# Copyright 2026 The vidtwin-gen authors. MIT License.
"""VidTwinPipeline: class- or text-conditional video generation on VidTwin's structure + dynamics latents.

Installed as `vidtwin_gen.pipelines.pipeline_vidtwin`. A saved pipeline folder loads with
`VidTwinPipeline.from_pretrained(folder)`, which runs no code from the folder, or with
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`, which executes the folder's
`pipeline_vidtwin.py` (a shim re-exporting this class): check a folder of unknown origin with
`remote_code_shim_matches(folder)` before trusting its code.

Latent spaces: every latent this pipeline takes or returns (`__call__(output_type="latent")`, `encode_video`,
`structure_latents` / `dynamics_latents`, `interpolate`, `reenact(output_type="latent")`) lives in the
denoiser's normalised space, where both parts have unit scale. `pipe.decode_latents(latents)` decodes them;
`pipe.denormalize_latents(latents)` maps them back to the VAE's space (what `pipe.vae.decode` takes).

Videos of any length: `pipe(..., num_frames=N)` makes ceil(N / T) chunks of the VAE's T frames one after another,
each conditioned on the clean latents of the chunks before it (a transformer with `num_context_chunks` > 0);
`pipe(..., video=clip)` continues a clip; `chunk_class_labels` / `chunk_prompts` switch the condition at chunk
boundaries, and `structure_latents` / `dynamics_latents` hold a part in every chunk or chunk by chunk. Latents of
K chunks are packed as a tiled encode's, (B, K*N): `split_chunk_latents` / `join_chunk_latents` convert.
"""

import difflib
import json
import math
import os
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from diffusers.utils.hub_utils import load_or_create_model_card, populate_model_card
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from huggingface_hub import ModelCard, ModelCardData

from vidtwin_gen.models.autoencoder_vidtwin import AutoencoderVidTwin
from vidtwin_gen.models.transformer_vidtwin import VidTwinTransformer3DModel

PARTS = ("structure", "dynamics")
FLOW_PREDICTION = "flow_prediction"  # diffusers' name (UniPC, DPM-Solver) for a rectified-flow velocity model
REMOTE_CODE_FILE = "pipeline_vidtwin.py"
_REMOTE_CODE = '''"""Loader shim: `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` resolves the pipeline
class through this file; the code itself is the installed `vidtwin_gen` package (pip install vidtwin-gen)."""

from vidtwin_gen.pipelines.pipeline_vidtwin import VidTwinPipeline  # noqa: F401
'''


def remote_code_shim_matches(folder: str | os.PathLike) -> bool:
    """Whether `folder/pipeline_vidtwin.py` is byte for byte the shim this version writes.

    `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` executes that file, so a folder whose
    shim differs (or is missing) should be loaded with `VidTwinPipeline.from_pretrained`, which runs no code
    from the folder.
    """
    shim = Path(folder) / REMOTE_CODE_FILE
    return shim.is_file() and shim.read_bytes() == _REMOTE_CODE.encode()


def check_remote_code_shim(folder: str | os.PathLike) -> bool:
    """`remote_code_shim_matches`, warning (UserWarning) with the file and the safe loader when it does not."""
    if remote_code_shim_matches(folder):
        return True
    warnings.warn(
        f"{Path(folder) / REMOTE_CODE_FILE} is not the loader shim vidtwin-gen writes (missing or modified): "
        "DiffusionPipeline.from_pretrained(..., trust_remote_code=True) would execute it. Load this folder with "
        "VidTwinPipeline.from_pretrained, which runs no code from the folder, or re-save it with save_pretrained.",
        UserWarning,
        stacklevel=2,
    )
    return False


def scheduler_prediction_type(scheduler) -> str:
    """What a scheduler expects the model to predict: "flow_prediction" (velocity eps - x0 on the flow-matching
    path), or its `prediction_type` ("sample", "epsilon", "v_prediction") for the DDPM family."""
    if type(scheduler).__name__.startswith("FlowMatch"):
        return FLOW_PREDICTION
    return scheduler.config.get("prediction_type", "epsilon")


@dataclass
class VidTwinPipelineOutput(BaseOutput):
    """
    Args:
        frames: np.ndarray (B, T, H, W, 3) in [0, 1], a torch.Tensor (B, T, 3, H, W), a list of lists of PIL
            images, with T the `num_frames` asked for; or for `output_type="latent"` the packed joint latents the
            denoiser produced, in its normalised space: (B, N) for one chunk, (B, K*N) for K chunks laid out as a
            tiled encode. Decode them with `pipe.decode_latents(frames, num_frames=T)`.
    """

    frames: np.ndarray | torch.Tensor | list[list[PIL.Image.Image]]


def encode_text(
    text_encoder, tokenizer, prompts: list[str], max_sequence_length: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-encoder states (B, L, D) and attention mask (B, L) for a list of prompts.

    Shared by the pipeline and the training script so that both condition on exactly the same features.
    """
    tokens = tokenizer(
        prompts, padding="max_length", max_length=max_sequence_length, truncation=True, return_tensors="pt"
    ).to(device)
    states = text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    return states, tokens.attention_mask


def _count(name: str, value, minimum: int = 1) -> int:
    """A positive (>= minimum) Python/NumPy integer, or a ValueError/TypeError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


class VidTwinPipeline(DiffusionPipeline):
    r"""
    Generate videos with a latent DiT over VidTwin's joint (structure, dynamics) latents.

    Args:
        vae: `AutoencoderVidTwin` that decodes the latents.
        transformer: `VidTwinTransformer3DModel`, class-conditional (`num_classes > 0`) and/or text-conditional.
        scheduler: `FlowMatchEulerDiscreteScheduler` (rectified flow) or `DDIMScheduler` (the paper's recipe), or
            any scheduler of the same objective swapped in with `X.from_config(pipe.scheduler.config)`.
        text_encoder, tokenizer: a transformers text encoder and its tokenizer, for text-conditional models;
            optional: without them the pipeline runs from `prompt_embeds`.
        id2label: class id -> class name, for class-conditional models (kept in `model_index.json`, where the
            ids are strings; integer keys are accepted too). Names must be unique.
        prediction_type: what the transformer predicts: "flow_prediction" (rectified flow) or the DDPM family's
            "sample" / "epsilon" / "v_prediction". None reads it from `scheduler` (the one it was trained with);
            it is kept in `model_index.json` so that an incompatible scheduler swapped in later is refused.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents", "class_labels", "prompt_embeds", "prompt_attention_mask"]

    def __init__(
        self,
        vae: AutoencoderVidTwin,
        transformer: VidTwinTransformer3DModel,
        scheduler,
        text_encoder=None,
        tokenizer=None,
        id2label: dict[str, str] | None = None,
        prediction_type: str | None = None,
    ):
        super().__init__()
        if transformer is not None and transformer.config.num_classes == 0 and transformer.config.text_embed_dim is None:
            raise ValueError(
                "VidTwinPipeline needs a class- or text-conditional transformer (num_classes > 0 or text_embed_dim set)"
            )
        self.register_modules(
            vae=vae, transformer=transformer, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
        )
        # JSON turns the integer keys into strings; normalise both ways.
        id2label = {int(key): value for key, value in (id2label or {}).items()}
        ids_by_name = {}
        for key, name in sorted(id2label.items()):
            ids_by_name.setdefault(name, []).append(key)
        duplicates = {name: ids for name, ids in ids_by_name.items() if len(ids) > 1}
        if duplicates:
            shared = "; ".join(f"{name!r}: ids {ids}" for name, ids in duplicates.items())
            raise ValueError(
                f"id2label gives the same name to several ids ({shared}), so some ids could never be asked for by "
                "name: make every class name unique"
            )
        if prediction_type is None and scheduler is not None:
            prediction_type = scheduler_prediction_type(scheduler)
        self.register_to_config(
            id2label={str(key): value for key, value in sorted(id2label.items())}, prediction_type=prediction_type
        )
        self.labels = {name: key for key, name in id2label.items()}
        self.video_processor = VideoProcessor(do_resize=False)

    # ------------------------------------------------------------------ saving / loading

    @classmethod
    def load_config(cls, *args, **kwargs):
        # model_index.json names the folder's loader shim for DiffusionPipeline (remote code); loading through
        # this class needs no code from the folder, so it sees its own name instead.
        config = super().load_config(*args, **kwargs)
        config_dict = config[0] if isinstance(config, tuple) else config
        if isinstance(config_dict.get("_class_name"), (list, tuple)):
            config_dict["_class_name"] = cls.__name__
        return config

    def save_pretrained(self, save_directory: str | os.PathLike, trained_on: str | None = None, **kwargs):
        """diffusers' `save_pretrained`, plus the remote-code shim and a README.md model card.

        `trained_on` (e.g. "UCF-101 train split 1") goes into the card; the rest is read from the components.
        """
        super().save_pretrained(save_directory, **kwargs)
        save_directory = Path(save_directory)
        (save_directory / REMOTE_CODE_FILE).write_text(_REMOTE_CODE)
        index_path = save_directory / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = ["pipeline_vidtwin", "VidTwinPipeline"]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        self.model_card(save_directory, trained_on).save(save_directory / "README.md")

    def model_card(self, save_directory: str | os.PathLike, trained_on: str | None = None) -> ModelCard:
        """The README.md card: diffusers metadata, the conditioning, training data, latent size and a usage snippet.

        An existing README.md in `save_directory` is kept (as diffusers' `push_to_hub` does) with the metadata
        filled in.
        """
        readme = Path(save_directory) / "README.md"
        if readme.is_file():
            card = load_or_create_model_card(str(readme), is_pipeline=True)
        else:
            card = ModelCard.from_template(ModelCardData(), model_description=self._card_description(trained_on))
        # Class names are text too (`pipe("RedSquareDrift")`), so both kinds are the text-to-video task.
        card.data.pipeline_tag = card.data.pipeline_tag or "text-to-video"
        conditioning = "text-conditional" if self.is_text_conditional else "class-conditional"
        tags = [tag for tag in ("vidtwin", "video-generation", conditioning) if tag not in (card.data.tags or [])]
        return populate_model_card(card, tags=tags)

    def _card_description(self, trained_on: str | None) -> str:
        if self.is_class_conditional:
            classes = ", ".join(self.config.id2label.values()) or f"{self.transformer.config.num_classes} unnamed ids"
            condition, call = f"class-conditional ({classes})", 'pipe(class_labels=["<class name>"], output_type="np")'
        else:
            condition, call = "text-conditional", 'pipe(prompt="<prompt>", output_type="np")'
        channels, frames, height, width = self.vae.sample_shape
        return (
            f"A VidTwinPipeline: a latent DiT over VidTwin's decoupled structure + dynamics latents, {condition}.\n\n"
            f"- Video: {frames} frames of {height}x{width} ({channels} channels) per clip.\n"
            f"- Latent: {self.latent_size} numbers per clip (structure {tuple(self.vae.structure_latent_shape)}, "
            f"dynamics {tuple(self.vae.dynamics_latent_shape)}), {self.transformer.num_tokens} tokens.\n"
            f"- Objective: {self.config.prediction_type}; scheduler {type(self.scheduler).__name__}.\n"
            f"- Training data: {trained_on or 'not recorded'}.\n\n"
            "```python\nfrom vidtwin_gen import VidTwinPipeline\n\n"
            'pipe = VidTwinPipeline.from_pretrained("<this folder>")  # runs no code from the folder\n'
            f"videos = {call}.frames\n```\n\n"
            "`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` also loads it but executes the "
            "folder's pipeline_vidtwin.py: check it first with "
            "`vidtwin_gen.pipelines.pipeline_vidtwin.remote_code_shim_matches(folder)`."
        )

    # ------------------------------------------------------------------ conditions

    @property
    def is_class_conditional(self) -> bool:
        return self.transformer.config.num_classes > 0

    @property
    def is_text_conditional(self) -> bool:
        return self.transformer.config.text_embed_dim is not None

    def get_label_ids(self, labels: int | str | list[int | str]) -> list[int]:
        """Class names or ids -> ids. An unknown name is an error that lists the closest names."""
        if torch.is_tensor(labels) or isinstance(labels, np.ndarray):
            labels = labels.tolist()
        labels = labels if isinstance(labels, (list, tuple)) else [labels]
        if not labels:
            raise ValueError("class_labels is empty: pass at least one class name or id")
        num_classes = self.transformer.config.num_classes
        ids = []
        for label in labels:
            if torch.is_tensor(label) and label.ndim == 0:
                label = label.item()
            if isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_)):
                if not 0 <= int(label) < num_classes:
                    raise ValueError(f"class id {int(label)} is out of range: this pipeline has {num_classes} classes")
                ids.append(int(label))
            elif isinstance(label, str) and label in self.labels:
                ids.append(self.labels[label])
            elif isinstance(label, str):
                close = difflib.get_close_matches(label, list(self.labels), n=5, cutoff=0.4)
                hint = f"closest: {', '.join(close)}" if close else f"known: {', '.join(sorted(self.labels)[:20])}"
                raise ValueError(f"unknown class name {label!r}; {hint}")
            else:
                raise TypeError(
                    f"class_labels must be class names (str) or ids (int in [0, {num_classes - 1}]), "
                    f"got {type(label).__name__} {label!r}"
                )
        return ids

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] = "",
        num_videos_per_prompt: int = 1,
        device: torch.device | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int = 32,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Text-encoder states for the prompts, as `__call__` takes them (as PixArt's `encode_prompt`).

        Either `prompt` or `prompt_embeds` (B, L, D) (with its mask (B, L); None means all tokens count). With
        guidance the negative side comes from `negative_prompt_embeds` or from encoding `negative_prompt`
        ("" by default). Returns (prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
        negative_prompt_attention_mask), each repeated `num_videos_per_prompt` times along the batch; the
        negative pair is None without guidance.
        """
        device = device or self._execution_device
        if prompt_embeds is None:
            prompt = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds, prompt_attention_mask = self._encode_text(prompt, "prompt", max_sequence_length, device)
        elif prompt_attention_mask is None:
            prompt_attention_mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=device)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            batch = prompt_embeds.shape[0]
            negative_prompt = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negative_prompt) != batch:
                raise ValueError(f"got {len(negative_prompt)} negative prompts for {batch} prompts")
            negative_prompt_embeds, negative_prompt_attention_mask = self._encode_text(
                negative_prompt, "negative_prompt", max_sequence_length, device
            )
        elif do_classifier_free_guidance and negative_prompt_attention_mask is None:
            negative_prompt_attention_mask = torch.ones(negative_prompt_embeds.shape[:2], dtype=torch.long, device=device)
        if not do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_attention_mask = None
        repeat = lambda x: None if x is None else x.to(device).repeat_interleave(num_videos_per_prompt, dim=0)  # noqa: E731
        return (repeat(prompt_embeds), repeat(prompt_attention_mask), repeat(negative_prompt_embeds),
                repeat(negative_prompt_attention_mask))

    def _encode_text(self, prompts: list[str], name: str, max_sequence_length: int, device) -> tuple:
        if self.text_encoder is None or self.tokenizer is None:
            hint = "negative_prompt_embeds (or guidance_scale <= 1)" if name == "negative_prompt" else "prompt_embeds"
            raise ValueError(
                f"{name} needs the pipeline's text_encoder and tokenizer, and this pipeline has none (they are "
                f"optional components): pass {hint} from `encode_prompt` of a pipeline that has them, or load "
                "them with from_pretrained(..., text_encoder=..., tokenizer=...)"
            )
        return encode_text(self.text_encoder, self.tokenizer, prompts, max_sequence_length, device)

    def check_inputs(
        self, class_labels, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
        negative_prompt_attention_mask, num_videos_per_prompt, num_inference_steps, guidance_scale, generator,
        callback_on_step_end_tensor_inputs,
    ):
        if class_labels is not None and not self.is_class_conditional:
            raise ValueError(
                "this pipeline's transformer is text-conditional only: pass prompt=... instead of class_labels"
            )
        text_inputs = (prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        if any(value is not None for value in text_inputs) and not self.is_text_conditional:
            raise ValueError(
                "this pipeline's transformer is class-conditional only: pass class_labels=... (names or ids) "
                f"instead of prompt; classes: {', '.join(sorted(self.labels)[:10])}..."
            )
        if self.is_class_conditional and class_labels is None:
            raise ValueError("this pipeline's transformer is class-conditional: pass class_labels=...")
        if self.is_text_conditional:
            self._check_text_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                    prompt_attention_mask, negative_prompt_attention_mask)
        _count("num_videos_per_prompt", num_videos_per_prompt)
        _count("num_inference_steps", num_inference_steps)
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.floating)) or not (
            math.isfinite(guidance_scale) and guidance_scale >= 0
        ):
            raise ValueError(
                f"guidance_scale must be a finite number >= 0 (values <= 1 switch guidance off), got {guidance_scale!r}"
            )
        generators = generator if isinstance(generator, list) else [generator]
        if generator is not None and (not generators or not all(isinstance(g, torch.Generator) for g in generators)):
            raise TypeError(
                "generator must be a torch.Generator or a list of them (one per video), got "
                f"{type(generator).__name__} {generator!r}; e.g. generator=torch.Generator().manual_seed(0)"
            )
        unknown = set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs: {unknown} not in {self._callback_tensor_inputs}")
        self._check_scheduler()

    def _check_text_inputs(
        self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
        negative_prompt_attention_mask,
    ):
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError(
                "this pipeline's transformer is text-conditional: pass prompt=... or prompt_embeds=... (one of them)"
            )
        if prompt is not None and not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                                                   and all(isinstance(p, str) for p in prompt))):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass negative_prompt or negative_prompt_embeds, not both")
        width = self.transformer.config.text_embed_dim
        for name, embeds, mask in (("prompt_embeds", prompt_embeds, prompt_attention_mask),
                                   ("negative_prompt_embeds", negative_prompt_embeds, negative_prompt_attention_mask)):
            if embeds is None:
                continue
            if embeds.ndim != 3 or embeds.shape[0] == 0 or embeds.shape[2] != width:
                raise ValueError(f"{name} must be (B >= 1, L, {width}) text-encoder states, got {tuple(embeds.shape)}")
            if mask is not None and tuple(mask.shape) != tuple(embeds.shape[:2]):
                raise ValueError(f"the attention mask of {name} must be (B, L) = {tuple(embeds.shape[:2])}, "
                                 f"got {tuple(mask.shape)}")
        if prompt_embeds is not None and negative_prompt_embeds is not None and (
            negative_prompt_embeds.shape != prompt_embeds.shape
        ):
            raise ValueError(f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} must have the shape of "
                             f"prompt_embeds {tuple(prompt_embeds.shape)}")

    def _check_scheduler(self):
        expected, got = self.config.prediction_type, scheduler_prediction_type(self.scheduler)
        if expected is not None and got != expected:
            if expected == FLOW_PREDICTION:
                fix = ("a flow-matching scheduler (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, or "
                       "UniPCMultistepScheduler with prediction_type='flow_prediction', use_flow_sigmas=True)")
            else:
                fix = ("a DDPM-family scheduler (DDIM, DPMSolverMultistep, UniPCMultistep, EulerDiscrete) with "
                       f"prediction_type={expected!r}")
            raise ValueError(
                f"the scheduler {type(self.scheduler).__name__} expects a model predicting {got!r}, but this "
                f"pipeline's transformer predicts {expected!r}: sampling would give noise. Use {fix}, e.g. "
                "X.from_config(pipe.scheduler.config) from the pipeline's own scheduler"
            )

    # ------------------------------------------------------------------ latents

    @property
    def latent_size(self) -> int:
        return self.vae.latent_size

    def normalize_latents(self, packed: torch.Tensor) -> torch.Tensor:
        """Packed VAE-space latents (B, N) -> the denoiser's normalised space (what this pipeline works in)."""
        structure, dynamics = self.transformer.normalize_latents(*self.vae.unpack_latents(packed))
        return self.vae.pack_latents(structure, dynamics)

    def denormalize_latents(self, packed: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize_latents`: the denoiser's space -> the VAE's (what `pipe.vae.decode` takes)."""
        structure, dynamics = self.transformer.denormalize_latents(*self.vae.unpack_latents(packed))
        return self.vae.pack_latents(structure, dynamics)

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Packed joint latent (B, N) of clips (B, 3, T, H, W) in [-1, 1] (the posterior mean), normalised: the
        space of `__call__`'s latents, its `structure_latents` / `dynamics_latents` and `interpolate`."""
        return self.normalize_latents(self.vae.encode(video.to(self._execution_device)).latent_dist.mode().float())

    @torch.no_grad()
    def decode_latents(
        self, latents: torch.Tensor, output_type: str = "np", part: str | None = None, num_frames: int | None = None,
        seam_blend_frames: int | None = None,
    ):
        """Packed normalised latents (B, N), e.g. `pipe(..., output_type="latent").frames`, -> frames in
        `output_type`; `part` decodes one part alone.

        `num_frames` trims a tiled decode to the length of the clip that was encoded. Latents of K > 1 chunks
        (B, K*N) have their seams blended over `seam_blend_frames` frames (see `__call__`; None: T/4 for full
        decodes, 0 for one part), so they decode to the frames `__call__` gives.
        """
        seam_blend_frames = 0 if part is not None and seam_blend_frames is None else self._check_seam_blend_frames(
            seam_blend_frames)
        video = self._vae_decode(latents.to(self._execution_device), part=part, num_frames=num_frames,
                                 blend_num_frames=seam_blend_frames)
        return self.video_processor.postprocess_video(video.float(), output_type=output_type)

    def _vae_decode(self, latents: torch.Tensor, **decode_kwargs) -> torch.Tensor:
        """Normalised packed latents -> the VAE's frames (B, 3, T, H, W) in its dtype (`vae.decode`'s keywords)."""
        return self.vae.decode(self.denormalize_latents(latents.float()).to(self.vae.dtype), **decode_kwargs).sample

    @property
    def default_seam_blend_frames(self) -> int:
        """Frames blended on each side of a seam when `seam_blend_frames` is None: a quarter of a chunk."""
        return self.vae.sample_shape[1] // 4

    def _check_seam_blend_frames(self, seam_blend_frames: int | None) -> int:
        """The frames to blend on each side of a seam: 0 to T/2 (None: `default_seam_blend_frames`)."""
        half = self.vae.sample_shape[1] // 2
        if seam_blend_frames is None:
            return self.default_seam_blend_frames
        if _count("seam_blend_frames", seam_blend_frames, minimum=0) > half:
            raise ValueError(f"seam_blend_frames must be at most {half} (half of a {2 * half}-frame chunk), "
                             f"got {seam_blend_frames}; 0 turns blending off")
        return int(seam_blend_frames)

    def prepare_latents(
        self, batch_size: int, generator, latents: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor:
        """Initial noise (B, N) in the denoiser's space, scaled by the scheduler's `init_noise_sigma`."""
        shape = (batch_size, self.latent_size)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for {batch_size} videos")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (videos, vae.latent_size), got {tuple(latents.shape)}")
        return latents.to(device, torch.float32) * getattr(self.scheduler, "init_noise_sigma", 1.0)

    def _noised(self, clean: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """`clean` brought to the noise level of `timestep` (the current step of the schedule)."""
        timestep = timestep.reshape(1).expand(clean.shape[0])
        if hasattr(self.scheduler, "scale_noise"):  # flow matching
            return self.scheduler.scale_noise(clean, timestep, noise)
        return self.scheduler.add_noise(clean, noise, timestep)

    def _fixed_parts(
        self, batch_size: int, structure_latents, dynamics_latents, num_chunks: int = 1
    ) -> dict[str, torch.Tensor]:
        """Parts to hold fixed, normalised, float32, left where the caller keeps them (a chunk's slice moves to the
        device when that chunk is generated): {"structure": (b, d_S, n_q*K, h_S, w_S), "dynamics":
        (b, d_D, t*K, w_D + h_D)}, b in (1, B), K = 1 (held in every chunk) or `num_chunks` (one per chunk)."""
        fixed = {}
        for part, value, shape in (
            ("structure", structure_latents, self.vae.structure_latent_shape),
            ("dynamics", dynamics_latents, self.vae.dynamics_latent_shape),
        ):
            if value is None:
                continue
            # Chunks lie along dim 2 (n_q for the structure, t for the dynamics), as in a tiled encode.
            per_chunk = shape[1]
            chunks = value.shape[2] // per_chunk if value.ndim == len(shape) + 1 else 0
            if chunks not in (1, num_chunks) or tuple(value.shape[1:]) != (shape[0], chunks * per_chunk, *shape[2:]):
                one_per_chunk = ", ".join(map(str, (shape[0], f"{per_chunk}*K", *shape[2:])))
                raise ValueError(
                    f"{part}_latents must be (B, {', '.join(map(str, shape))}), held in every chunk, or "
                    f"(B, {one_per_chunk}) with K = {num_chunks} (the chunks generated), one per chunk as "
                    f"`pipe.vae.unpack_latents` gives them for a tiled encode; got {tuple(value.shape)}"
                )
            if value.shape[0] not in (1, batch_size):
                raise ValueError(f"{part}_latents has batch {value.shape[0]}; expected 1 or {batch_size}")
            fixed[part] = value.float()
        if len(fixed) == 2:
            raise ValueError("holding both parts fixed leaves nothing to generate; decode with the VAE instead")
        return fixed

    def _fixed_chunk(self, fixed: dict, chunk: int, batch_size: int, device) -> dict[str, torch.Tensor]:
        """The held parts of chunk `chunk` (0-based) on `device`, broadcast to the batch."""
        held = {}
        for part, value in fixed.items():
            shape = self.vae.structure_latent_shape if part == "structure" else self.vae.dynamics_latent_shape
            start = (chunk if value.shape[2] > shape[1] else 0) * shape[1]
            held[part] = value[:, :, start : start + shape[1]].to(device).expand(batch_size, *shape)
        return held

    def _with_fixed(self, latents: torch.Tensor, fixed: dict, noise: torch.Tensor, timestep) -> torch.Tensor:
        if not fixed:
            return latents
        parts = dict(zip(PARTS, self.vae.unpack_latents(latents)))
        noise_parts = dict(zip(PARTS, self.vae.unpack_latents(noise)))
        for part, clean in fixed.items():
            parts[part] = clean if timestep is None else self._noised(clean, noise_parts[part], timestep)
        return self.vae.pack_latents(parts["structure"], parts["dynamics"])

    # ------------------------------------------------------------------ chunks (videos of any length)

    @property
    def num_context_chunks(self) -> int:
        """How many previous chunks the transformer conditions on (0: a single-chunk model)."""
        return int(getattr(self.transformer.config, "num_context_chunks", 0) or 0)

    def split_chunk_latents(self, latents: torch.Tensor) -> list[torch.Tensor]:
        """Packed latents of K chunks (B, K*N), laid out as a tiled encode's (all structures, then all dynamics),
        -> the K chunks' packed latents (B, N), in order."""
        structure, dynamics = self.vae.unpack_latents(latents)
        n_q, t = self.vae.structure_latent_shape[1], self.vae.dynamics_latent_shape[1]
        return [self.vae.pack_latents(s, d) for s, d in zip(structure.split(n_q, dim=2), dynamics.split(t, dim=2))]

    def join_chunk_latents(self, chunks: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of `split_chunk_latents`: K packed chunks (B, N) -> (B, K*N), what `decode_latents` takes."""
        structures, dynamics = zip(*(self.vae.unpack_latents(chunk) for chunk in chunks))
        return self.vae.pack_latents(torch.cat(structures, dim=2), torch.cat(dynamics, dim=2))

    def _check_context_chunks(self, context_chunks, num_chunks: int, num_frames: int, video) -> int:
        available = self.num_context_chunks
        if context_chunks is None:
            if available == 0 and (num_chunks > 1 or video is not None):
                asked = ("video=... (continuing a clip)" if video is not None
                         else f"num_frames={num_frames} ({num_chunks} chunks of {self.vae.sample_shape[1]} frames)")
                raise ValueError(
                    f"{asked} needs a long-video model, and this pipeline's transformer has no context "
                    "(num_context_chunks=0): its chunks would be independent clips with a jump at every seam. Train "
                    "one with a train_configs/dit/*_long.yaml config, or pass context_chunks=0 (vidtwin-gen "
                    "generate --context-chunks 0) to generate independent chunks on purpose"
                )
            return available
        if isinstance(context_chunks, bool) or not isinstance(context_chunks, (int, np.integer)) or not (
            0 <= context_chunks <= available
        ):
            raise ValueError(
                f"context_chunks must be an integer in [0, {available}] (the transformer's num_context_chunks), "
                f"got {context_chunks!r}"
            )
        if context_chunks == 0 and video is not None:
            raise ValueError(
                "video=... is continued through the model's context, which context_chunks=0 switches off: pass "
                "context_chunks >= 1 (or None for the model's num_context_chunks)"
            )
        return int(context_chunks)

    def _video_context(self, video, context_chunks: int, batch_size: int) -> list[torch.Tensor]:
        """Clean normalised latents (B, N) of the last `context_chunks` whole T-frame chunks of `video`, oldest
        first, counted back from its last frame (so F need not be a multiple of T)."""
        if video is None:
            return []
        frames = self.vae.sample_shape[1]
        if not torch.is_tensor(video) or video.ndim != 5:
            raise ValueError(
                f"video must be a tensor (B, 3, F, H, W) in [-1, 1] (the clip to continue), got "
                f"{tuple(video.shape) if torch.is_tensor(video) else type(video).__name__}"
            )
        if video.shape[0] not in (1, batch_size):
            raise ValueError(f"video has batch {video.shape[0]}; expected 1 (continued in every video) or {batch_size}")
        if video.shape[2] < frames:
            raise ValueError(
                f"video has {video.shape[2]} frames; continuing a clip needs at least {frames} (one chunk of the VAE)"
            )
        count, end = min(context_chunks, video.shape[2] // frames), video.shape[2]
        starts = [end - (count - i) * frames for i in range(count)]
        return [self.encode_video(video[:, :, start : start + frames]).expand(batch_size, -1) for start in starts]

    def _context_inputs(self, history: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The transformer's context for clean previous chunks (B, N) each, oldest first: `context_structure`
        (B, K, d_S, n_q, h_S, w_S) and `context_dynamics` (B, K, d_D, t, w_D + h_D), stacked twice when guiding
        (guidance is on the class / text condition; the context is the same in both branches); {} for none."""
        if not history:
            return {}
        structure, dynamics = zip(*(self.vae.unpack_latents(chunk) for chunk in history))
        context = {"context_structure": torch.stack(structure, dim=1), "context_dynamics": torch.stack(dynamics, dim=1)}
        if self.do_classifier_free_guidance:
            context = {key: torch.cat([value] * 2) for key, value in context.items()}
        return context

    def _chunk_noise(self, latents: torch.Tensor | None, num_chunks: int, batch_size: int) -> list:
        """The given initial noise per chunk (None: drawn from `generator` chunk by chunk)."""
        if latents is None:
            return [None] * num_chunks
        if num_chunks == 1:
            return [latents]  # checked by prepare_latents
        shape = (batch_size, num_chunks * self.latent_size)
        if not torch.is_tensor(latents) or tuple(latents.shape) != shape:
            raise ValueError(
                f"latents must have shape {shape} (videos, {num_chunks} chunks x vae.latent_size, packed as a tiled "
                f"encode: see join_chunk_latents), got {tuple(getattr(latents, 'shape', ()))}"
            )
        return self.split_chunk_latents(latents)

    def _condition_schedule(self, num_chunks: int, class_labels, prompt, chunk_class_labels, chunk_prompts,
                            prompt_embeds) -> list[tuple]:
        """(class labels, prompt) for each chunk: one entry per chunk from `chunk_class_labels` / `chunk_prompts`,
        otherwise `class_labels` / `prompt` for every chunk."""
        for name, per_chunk, single_name, single in (("chunk_class_labels", chunk_class_labels, "class_labels", class_labels),
                                                     ("chunk_prompts", chunk_prompts, "prompt", prompt)):
            if per_chunk is None:
                continue
            if single is not None:
                raise ValueError(f"pass {single_name} (the same in every chunk) or {name} (one per chunk), not both")
            if not isinstance(per_chunk, (list, tuple)) or len(per_chunk) != num_chunks:
                got = f"{len(per_chunk)} entries" if isinstance(per_chunk, (list, tuple)) else type(per_chunk).__name__
                raise ValueError(
                    f"{name} needs one entry per chunk generated: {num_chunks} (num_frames / "
                    f"{self.vae.sample_shape[1]} frames per chunk, rounded up), got {got}"
                )
        if chunk_prompts is not None and prompt_embeds is not None:
            raise ValueError("chunk_prompts are encoded by the pipeline's text encoder: pass them without prompt_embeds")
        labels = list(chunk_class_labels) if chunk_class_labels is not None else [class_labels] * num_chunks
        prompts = list(chunk_prompts) if chunk_prompts is not None else [prompt] * num_chunks
        return list(zip(labels, prompts))

    def _chunk_conditions(self, schedule: list[tuple], text_inputs: dict, num_videos_per_prompt: int, device,
                          max_sequence_length: int) -> list[dict[str, torch.Tensor]]:
        """`prepare_conditions` for each chunk of `schedule`, computed (and text encoded) once per distinct entry."""
        conditions, cache = [], {}
        for index, (labels, text) in enumerate(schedule):
            if index and self.is_text_conditional and text is not None:
                self._check_text_inputs(text, text_inputs["negative_prompt"], None,
                                        text_inputs["negative_prompt_embeds"], None,
                                        text_inputs["negative_prompt_attention_mask"])
            key = (None if labels is None else tuple(self.get_label_ids(labels)),
                   None if text is None else tuple([text] if isinstance(text, str) else text))
            if key not in cache:
                cache[key] = self._encode_conditions(labels, text, text_inputs, num_videos_per_prompt, device,
                                                     max_sequence_length)
            conditions.append(cache[key])
        videos = [next(iter(c.values())).shape[0] for c in conditions]
        if len(set(videos)) > 1:
            first_other = next(i for i, n in enumerate(videos) if n != videos[0])
            raise ValueError(
                f"every chunk needs the same number of videos: chunk {first_other}'s condition gives "
                f"{videos[first_other] // (2 if self.do_classifier_free_guidance else 1)}, chunk 0's "
                f"{videos[0] // (2 if self.do_classifier_free_guidance else 1)}"
            )
        return conditions

    def _encode_conditions(self, labels, text, text_inputs: dict, num_videos_per_prompt: int, device,
                           max_sequence_length: int) -> dict[str, torch.Tensor]:
        """One chunk's conditions: the prompt encoded (text-conditional pipelines), then `prepare_conditions`."""
        embeds = {key: text_inputs[key] for key in ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                                                    "negative_prompt_attention_mask")}
        if self.is_text_conditional:
            negative = text_inputs["negative_prompt"]
            encoded = self.encode_prompt(
                text, self.do_classifier_free_guidance, "" if negative is None else negative, num_videos_per_prompt,
                device, embeds["prompt_embeds"], embeds["negative_prompt_embeds"], embeds["prompt_attention_mask"],
                embeds["negative_prompt_attention_mask"], max_sequence_length,
            )
            embeds = dict(zip(("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                               "negative_prompt_attention_mask"), encoded))
        return self.prepare_conditions(labels, embeds["prompt_embeds"], embeds["prompt_attention_mask"],
                                       embeds["negative_prompt_embeds"], embeds["negative_prompt_attention_mask"],
                                       num_videos_per_prompt, device)

    def _add_chunk_output(self, outputs: list, pending, latents: torch.Tensor, output_type: str, num_chunks: int,
                          seam_blend_frames: int):
        """Keep a finished chunk until the end: decoded at once (on the CPU when there are several chunks), so
        that only the context latents and one decoded chunk stay on the device. The decoded chunk waits as
        `pending` (returned) until the next one blends the seam between them (`vae.blend_seam`); `latents=None`
        flushes it."""
        if output_type == "latent":
            if latents is not None:
                outputs.append(latents if num_chunks == 1 else latents.cpu())
            return None
        video = None
        if latents is not None:
            video = self._vae_decode(latents)
            if pending is not None and seam_blend_frames:
                pending, video = self.vae.blend_seam(pending, video, seam_blend_frames)
        if pending is not None:
            frames = self.video_processor.postprocess_video(pending.float(), output_type=output_type)
            outputs.append(frames.cpu() if num_chunks > 1 and torch.is_tensor(frames) else frames)
        return video

    def _join_chunk_outputs(self, outputs: list, output_type: str, num_frames: int):
        """The chunks' outputs joined along time and trimmed to `num_frames` (latents: (B, K*N), not trimmed)."""
        if output_type == "latent":
            return outputs[0] if len(outputs) == 1 else self.join_chunk_latents(outputs)
        if output_type == "pil":
            return [[frame for chunk in outputs for frame in chunk[i]][:num_frames] for i in range(len(outputs[0]))]
        if len(outputs) == 1:
            frames = outputs[0]
        else:
            frames = torch.cat(outputs, dim=1) if torch.is_tensor(outputs[0]) else np.concatenate(outputs, axis=1)
        return frames[:, :num_frames]

    # ------------------------------------------------------------------ generation

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_chunk(self) -> int:
        """The chunk being generated (0-based), e.g. for `callback_on_step_end`."""
        return self._current_chunk

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def prepare_conditions(
        self, class_labels, prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
        negative_prompt_attention_mask, num_videos_per_prompt: int, device,
    ) -> dict[str, torch.Tensor]:
        """The transformer's conditions per video: {"class_labels": (B,), "prompt_embeds": (B, L, D),
        "prompt_attention_mask": (B, L)} (those that apply), with the null class / negative prompt stacked in
        front (2B) when guiding. The text ones come already repeated per video from `encode_prompt`."""
        conditions = {}
        if class_labels is not None:
            ids = torch.tensor(self.get_label_ids(class_labels), device=device)
            conditions["class_labels"] = ids.repeat_interleave(num_videos_per_prompt)
        if prompt_embeds is not None:
            conditions["prompt_embeds"], conditions["prompt_attention_mask"] = prompt_embeds, prompt_attention_mask
        if self.do_classifier_free_guidance:
            negatives = {"prompt_embeds": negative_prompt_embeds, "prompt_attention_mask": negative_prompt_attention_mask}
            if "class_labels" in conditions:
                negatives["class_labels"] = torch.full_like(conditions["class_labels"], self.transformer.null_class_label)
            conditions = {key: torch.cat([negatives[key], value]) for key, value in conditions.items()}
        return conditions

    def set_timesteps(self, num_inference_steps: int, device) -> torch.Tensor:
        """The scheduler's timesteps; `mu` from the token count (as Flux/SD3) for dynamic shifting."""
        kwargs = {}
        if self.scheduler.config.get("use_dynamic_shifting", False):
            # Imported here: the Flux module pulls in transformers' CLIP/T5 classes, needed only for this.
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            config = self.scheduler.config
            kwargs["mu"] = calculate_shift(self.transformer.num_tokens, config.get("base_image_seq_len", 256),
                                           config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                           config.get("max_shift", 1.15))
        self.scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)  # lets scale_noise index the schedule without a search per sample
        return self.scheduler.timesteps

    def predict(
        self, latents: torch.Tensor, timestep: torch.Tensor, conditions: dict, context: dict | None = None
    ) -> torch.Tensor:
        """The transformer's (guided) prediction (B, N) for packed latents (B, N) at `timestep`; `context` holds
        the previous chunks as `_context_inputs` gives them (already doubled when guiding)."""
        model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
        if hasattr(self.scheduler, "scale_model_input"):
            model_input = self.scheduler.scale_model_input(model_input, timestep)
        structure, dynamics = self.vae.unpack_latents(model_input)
        prediction = self.transformer(
            structure, dynamics, timestep.expand(model_input.shape[0]),
            class_labels=conditions.get("class_labels"), encoder_hidden_states=conditions.get("prompt_embeds"),
            encoder_attention_mask=conditions.get("prompt_attention_mask"), **(context or {}),
        )
        prediction = self.vae.pack_latents(prediction.structure, prediction.dynamics).float()
        if self.do_classifier_free_guidance:
            unconditional, conditional = prediction.chunk(2)
            prediction = unconditional + self.guidance_scale * (conditional - unconditional)
        return prediction

    def denoise(
        self, latents: torch.Tensor, timesteps: torch.Tensor, conditions: dict, context: dict, fixed: dict,
        fixed_noise: torch.Tensor | None, callback_on_step_end, callback_on_step_end_tensor_inputs: list[str],
        progress_bar,
    ) -> torch.Tensor:
        """One chunk's denoising loop: initial noise (B, N) -> clean latents (B, N), the held parts restored."""
        for step, timestep in enumerate(timesteps):
            if self.interrupt:
                break
            latents = self._with_fixed(latents, fixed, fixed_noise, timestep)
            prediction = self.predict(latents, timestep, conditions, context)
            latents = self.scheduler.step(prediction, timestep, latents, return_dict=False)[0]
            if callback_on_step_end is not None:
                tensors = {"latents": latents, **conditions}
                outputs = callback_on_step_end(
                    self, step, timestep, {name: tensors.get(name) for name in callback_on_step_end_tensor_inputs}
                )
                latents = outputs.pop("latents", latents)
                conditions.update({key: value for key, value in outputs.items() if key in conditions})
            progress_bar.update()
        return self._with_fixed(latents, fixed, fixed_noise, None)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | list[int | str] | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_videos_per_prompt: int = 1,
        num_inference_steps: int = 50,
        guidance_scale: float = 4.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        structure_latents: torch.Tensor | None = None,
        dynamics_latents: torch.Tensor | None = None,
        num_frames: int | None = None,
        video: torch.Tensor | None = None,
        context_chunks: int | None = None,
        chunk_class_labels: list | None = None,
        chunk_prompts: list | None = None,
        seam_blend_frames: int | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int = 32,
    ) -> VidTwinPipelineOutput | tuple:
        r"""
        Videos of any length are generated as consecutive chunks of the VAE's T frames (`pipe.vae.sample_shape[1]`),
        one after another, each conditioned on the clean latents of the chunks before it (up to `context_chunks`).
        Every chunk is decoded as soon as it is made, so memory stays that of one chunk plus its context.

        Args:
            class_labels: class names or ids (class-conditional pipelines), the same in every chunk.
            prompt, negative_prompt: text (text-conditional pipelines); the negative prompt defaults to "".
            num_videos_per_prompt: videos per label / prompt.
            num_inference_steps: denoising steps (>= 1) per chunk.
            guidance_scale: classifier-free guidance weight (>= 0); <= 1 disables guidance. Guidance is on the class
                / text condition: both branches see the same context.
            generator: one generator, or one per video (then a batch equals the videos generated one by one). Chunks
                draw their noise from it one after another, so the first chunk is what a T-frame call gives.
            latents: initial noise, packed (B, N) with B = number of videos, N = `vae.latent_size`; for K > 1 chunks
                (B, K*N), laid out as a tiled encode (`join_chunk_latents` of K (B, N) tensors).
            prompt_embeds, prompt_attention_mask: text-encoder states (B, L, D) and mask (B, L) instead of
                `prompt`, e.g. from `encode_prompt`; a pipeline saved without its text encoder runs from these.
            negative_prompt_embeds, negative_prompt_attention_mask: the same for the negative side (guidance).
            structure_latents: hold the structure fixed and generate new dynamics for it, normalised: (B or 1, d_S,
                n_q, h_S, w_S), e.g. `pipe.vae.unpack_latents(pipe.encode_video(clip))[0]`, held in every chunk; or
                (B or 1, d_S, n_q*K, h_S, w_S) for K chunks, chunk k holding the k-th (what `unpack_latents` gives
                for the tiled encode of a K*T-frame clip, `pipe.vae.enable_tiling()`).
            dynamics_latents: hold the dynamics fixed, (B or 1, d_D, t, w_D + h_D) for every chunk or
                (B or 1, d_D, t*K, w_D + h_D) one per chunk, and generate the structure.
            num_frames: frames per video, any N >= 1 (default T): ceil(N / T) chunks, trimmed to N frames.
            video: a clip to continue, (1 or B, 3, F, H, W) in [-1, 1] at the VAE's size, F >= T. Its last
                `context_chunks` whole T-frame chunks, counted back from its last frame (so F need not be a multiple
                of T; frames before them are not used), are encoded as the first chunk's context. The output holds
                only the `num_frames` NEW frames, which follow the clip's last frame: the continued video is
                `torch.cat([clip, new], dim=2)` (or along the frame axis of the output type).
            context_chunks: how many previous chunks each chunk sees, 0 to the transformer's `num_context_chunks`
                (None: all of them). 0 generates independent chunks: the naive baseline, and the only way a
                context-free model (num_context_chunks=0) makes more than T frames.
            chunk_class_labels: one entry per chunk (ceil(num_frames / T) of them), each what `class_labels`
                takes, with the same number of videos in every chunk: switches class at chunk boundaries. Instead
                of `class_labels`.
            chunk_prompts: one prompt (or list of prompts) per chunk, instead of `prompt`; needs the text encoder.
            seam_blend_frames: frames blended on each side of every seam between generated chunks (0 to T/2; None:
                T/4). Decoded chunk by chunk, each chunk's reconstruction error is its own, so frames jump at a seam;
                the T frames around it are re-encoded and decoded as one chunk and crossfaded in
                (`vae.blend_seam`). 0 decodes every chunk on its own. The seam between a `video` and the first new
                chunk is not blended (the output does not hold the given frames).
            output_type: "np", "pil", "pt" or "latent". "latent" gives the packed latents the denoiser produced, in
                its normalised space: (B, N) for one chunk, (B, K*N) for K chunks laid out as a tiled encode (not
                trimmed to `num_frames`; `pipe.decode_latents(latents, num_frames=num_frames)` turns them into
                frames, `split_chunk_latents` into chunks). With several chunks, "pt" frames and latents are
                returned on the CPU.
            callback_on_step_end: called as fn(pipe, step, timestep, tensors) after each step of each chunk (`step`
                counts within the chunk; `pipe.current_chunk` says which) with the tensors named in
                `callback_on_step_end_tensor_inputs` (from `_callback_tensor_inputs`; conditions are the
                guidance-doubled ones the transformer gets); it may return a dict replacing them, and may set
                `pipe._interrupt = True` to stop early: the current chunk ends there and no further chunk is made.
            max_sequence_length: tokens per prompt.

        Returns:
            `VidTwinPipelineOutput` with `frames`, or `(frames,)` when `return_dict` is False.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        # 1. Check inputs. ceil(num_frames / T) chunks, each seeing up to `context_chunks` chunks before it.
        chunk_frames = self.vae.sample_shape[1]
        num_frames = chunk_frames if num_frames is None else _count("num_frames", num_frames)
        num_chunks = -(-num_frames // chunk_frames)
        context_chunks = self._check_context_chunks(context_chunks, num_chunks, num_frames, video)
        seam_blend_frames = self._check_seam_blend_frames(seam_blend_frames)
        schedule = self._condition_schedule(num_chunks, class_labels, prompt, chunk_class_labels, chunk_prompts,
                                            prompt_embeds)
        self.check_inputs(schedule[0][0], schedule[0][1], negative_prompt, prompt_embeds, negative_prompt_embeds,
                          prompt_attention_mask, negative_prompt_attention_mask, num_videos_per_prompt,
                          num_inference_steps, guidance_scale, generator, callback_on_step_end_tensor_inputs)
        self._guidance_scale = guidance_scale
        self._interrupt = False
        device = self._execution_device

        # 2. Conditions per chunk (the prompt encoded for text-conditional pipelines), the null condition in front
        # when guiding.
        text_inputs = {"negative_prompt": negative_prompt, "prompt_embeds": prompt_embeds,
                       "prompt_attention_mask": prompt_attention_mask, "negative_prompt_embeds": negative_prompt_embeds,
                       "negative_prompt_attention_mask": negative_prompt_attention_mask}
        conditions = self._chunk_conditions(schedule, text_inputs, num_videos_per_prompt, device, max_sequence_length)
        batch_size = next(iter(conditions[0].values())).shape[0] // (2 if self.do_classifier_free_guidance else 1)

        # 3. Given noise per chunk, the parts held fixed, and the context the given clip provides.
        noise = self._chunk_noise(latents, num_chunks, batch_size)
        fixed = self._fixed_parts(batch_size, structure_latents, dynamics_latents, num_chunks)
        history = deque(self._video_context(video, context_chunks, batch_size), maxlen=max(context_chunks, 1))

        # 4. Chunk after chunk: denoise, keep its clean latents as the next chunks' context, decode it at once.
        outputs, pending = [], None
        with self.progress_bar(total=num_chunks * num_inference_steps) as progress_bar:
            for chunk in range(num_chunks):
                self._current_chunk = chunk
                if num_chunks > 1:
                    progress_bar.set_postfix_str(f"chunk {chunk + 1}/{num_chunks}")
                # Timesteps before the noise (`init_noise_sigma` depends on them); set anew for every chunk, which
                # also resets the scheduler's step index and multistep history.
                timesteps = self.set_timesteps(num_inference_steps, device)
                self._num_timesteps = len(timesteps)
                chunk_latents = self.prepare_latents(batch_size, generator, noise[chunk], device)
                held = self._fixed_chunk(fixed, chunk, batch_size, device)
                held_noise = randn_tensor(chunk_latents.shape, generator=generator, device=device,
                                          dtype=torch.float32) if held else None
                context = self._context_inputs(list(history)) if context_chunks else {}
                chunk_latents = self.denoise(chunk_latents, timesteps, conditions[chunk], context, held, held_noise,
                                             callback_on_step_end, callback_on_step_end_tensor_inputs, progress_bar)
                if context_chunks:
                    history.append(chunk_latents)
                pending = self._add_chunk_output(outputs, pending, chunk_latents, output_type, num_chunks,
                                                 seam_blend_frames)
                if self.interrupt:
                    break

        # 5. The chunks joined and trimmed to num_frames ("latent": the denoiser's latents as they are).
        self._add_chunk_output(outputs, pending, None, output_type, num_chunks, seam_blend_frames)
        frames = self._join_chunk_outputs(outputs, output_type, num_frames)
        self.maybe_free_model_hooks()
        return VidTwinPipelineOutput(frames=frames) if return_dict else (frames,)

    # ------------------------------------------------------------------ decoupled control

    @torch.no_grad()
    def reenact(self, structure_video: torch.Tensor, dynamics_video: torch.Tensor, output_type: str = "np"):
        """Cross-reenactment: the structure of `structure_video` with the dynamics of `dynamics_video`.

        Both (B, 3, T, H, W) in [-1, 1] with the same shape. Returns frames in `output_type` (or, for "latent",
        packed normalised latents that `decode_latents` takes).
        """
        if structure_video.shape != dynamics_video.shape:
            raise ValueError(
                "cross-reenactment needs clips of the same shape, got "
                f"{tuple(structure_video.shape)} and {tuple(dynamics_video.shape)}"
            )
        structure, _ = self.vae.unpack_latents(self.encode_video(structure_video))
        _, dynamics = self.vae.unpack_latents(self.encode_video(dynamics_video))
        latents = self.vae.pack_latents(structure, dynamics)
        if output_type == "latent":
            return latents
        return self.decode_latents(latents, output_type, num_frames=structure_video.shape[2])

    @torch.no_grad()
    def interpolate(
        self,
        start: torch.Tensor,
        end: torch.Tensor,
        num_points: int = 5,
        part: str | None = None,
        output_type: str = "np",
    ):
        """Decode `num_points` latents on the straight line from `start` to `end`, per part.

        `start`/`end` are packed normalised latents (1, N), from `encode_video` or from
        `__call__(..., output_type="latent")`. `part="structure"` moves only the structure (the dynamics stay
        those of `start`), `part="dynamics"` only the dynamics, None both. The line runs in the generator's
        normalised space, where both parts have unit scale. Returns frames for (num_points, ...) videos, or the
        normalised latents (num_points, N) for "latent".
        """
        if part not in (None, *PARTS):
            raise ValueError(f"part must be None, 'structure' or 'dynamics', got {part!r}")
        if start.shape != end.shape or start.ndim != 2 or start.shape[0] != 1:
            raise ValueError(f"start and end must both be packed latents (1, N), got {tuple(start.shape)}, {tuple(end.shape)}")
        _count("num_points", num_points, minimum=2)
        device = self._execution_device
        start, end = start.to(device).float(), end.to(device).float()
        weights = torch.linspace(0, 1, num_points, device=device)[:, None]
        path = dict(zip(PARTS, self.vae.unpack_latents(start + weights * (end - start))))
        if part is not None:
            other = "dynamics" if part == "structure" else "structure"
            path[other] = dict(zip(PARTS, self.vae.unpack_latents(start)))[other].expand_as(path[other])
        latents = self.vae.pack_latents(path["structure"], path["dynamics"])
        return latents if output_type == "latent" else self.decode_latents(latents, output_type)
