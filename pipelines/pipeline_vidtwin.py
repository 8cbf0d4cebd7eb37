# Copyright 2026 The vidtwin-gen authors. MIT License.
"""VidTwinPipeline: class- or text-conditional video generation on VidTwin's structure + dynamics latents.

Installed as `vidtwin_gen.pipelines.pipeline_vidtwin`. A saved pipeline folder loads with
`VidTwinPipeline.from_pretrained(folder)` or `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`
(the folder's `pipeline_vidtwin.py` re-exports this class from the installed package).
"""

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from vidtwin_gen.models.autoencoder_vidtwin import AutoencoderVidTwin
from vidtwin_gen.models.transformer_vidtwin import VidTwinTransformer3DModel

PARTS = ("structure", "dynamics")
_REMOTE_CODE = '''"""Loader shim: `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` resolves the pipeline
class through this file; the code itself is the installed `vidtwin_gen` package (pip install vidtwin-gen)."""

from vidtwin_gen.pipelines.pipeline_vidtwin import VidTwinPipeline  # noqa: F401
'''


@dataclass
class VidTwinPipelineOutput(BaseOutput):
    """
    Args:
        frames: np.ndarray (B, T, H, W, 3) in [0, 1], a torch.Tensor (B, T, 3, H, W), a list of lists of PIL
            images, or the packed joint latents (B, N) in the VAE's latent space for `output_type="latent"`.
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


class VidTwinPipeline(DiffusionPipeline):
    r"""
    Generate videos with a latent DiT over VidTwin's joint (structure, dynamics) latents.

    Args:
        vae: `AutoencoderVidTwin` that decodes the latents.
        transformer: `VidTwinTransformer3DModel`, class-conditional (`num_classes > 0`) and/or text-conditional.
        scheduler: `FlowMatchEulerDiscreteScheduler` (rectified flow) or `DDIMScheduler` (the paper's recipe).
        text_encoder, tokenizer: a transformers text encoder and its tokenizer, for text-conditional models.
        id2label: class id -> class name, for class-conditional models (kept in `model_index.json`, where the
            ids are strings; integer keys are accepted too).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vae: AutoencoderVidTwin,
        transformer: VidTwinTransformer3DModel,
        scheduler,
        text_encoder=None,
        tokenizer=None,
        id2label: dict[str, str] | None = None,
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
        self.register_to_config(id2label={str(key): value for key, value in sorted(id2label.items())})
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

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        super().save_pretrained(save_directory, **kwargs)
        save_directory = Path(save_directory)
        (save_directory / "pipeline_vidtwin.py").write_text(_REMOTE_CODE)
        index_path = save_directory / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = ["pipeline_vidtwin", "VidTwinPipeline"]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ conditions

    @property
    def is_class_conditional(self) -> bool:
        return self.transformer.config.num_classes > 0

    @property
    def is_text_conditional(self) -> bool:
        return self.transformer.config.text_embed_dim is not None

    def get_label_ids(self, labels: int | str | list[int | str]) -> list[int]:
        """Class names or ids -> ids. An unknown name is an error that lists the closest names."""
        labels = labels if isinstance(labels, (list, tuple)) else [labels]
        num_classes = self.transformer.config.num_classes
        ids = []
        for label in labels:
            if isinstance(label, (int, np.integer)) or (torch.is_tensor(label) and label.ndim == 0):
                if not 0 <= int(label) < num_classes:
                    raise ValueError(f"class id {int(label)} is out of range: this pipeline has {num_classes} classes")
                ids.append(int(label))
            elif label in self.labels:
                ids.append(self.labels[label])
            else:
                close = difflib.get_close_matches(str(label), list(self.labels), n=5, cutoff=0.4)
                hint = f"closest: {', '.join(close)}" if close else f"known: {', '.join(sorted(self.labels)[:20])}"
                raise ValueError(f"unknown class name {label!r}; {hint}")
        return ids

    def encode_prompt(
        self, prompt: list[str], negative_prompt: list[str] | None, max_sequence_length: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(states, mask) for the prompts and, when given, for the negative prompts."""
        states, mask = encode_text(self.text_encoder, self.tokenizer, prompt, max_sequence_length, device)
        if negative_prompt is None:
            return states, mask, None, None
        negative_states, negative_mask = encode_text(
            self.text_encoder, self.tokenizer, negative_prompt, max_sequence_length, device
        )
        return states, mask, negative_states, negative_mask

    def check_inputs(self, class_labels, prompt, negative_prompt, callback_on_step_end_tensor_inputs):
        if class_labels is not None and not self.is_class_conditional:
            raise ValueError(
                "this pipeline's transformer is text-conditional only: pass prompt=... instead of class_labels"
            )
        if prompt is not None and not self.is_text_conditional:
            raise ValueError(
                "this pipeline's transformer is class-conditional only: pass class_labels=... (names or ids) "
                f"instead of prompt; classes: {', '.join(sorted(self.labels)[:10])}..."
            )
        if self.is_text_conditional and prompt is None:
            raise ValueError("this pipeline's transformer is text-conditional: pass prompt=...")
        if self.is_class_conditional and class_labels is None:
            raise ValueError("this pipeline's transformer is class-conditional: pass class_labels=...")
        if negative_prompt is not None and prompt is None:
            raise ValueError("negative_prompt needs prompt")
        unknown = set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs: {unknown} not in {self._callback_tensor_inputs}")

    # ------------------------------------------------------------------ latents

    @property
    def latent_size(self) -> int:
        return self.vae.latent_size

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Packed joint latent (B, N) of clips (B, 3, T, H, W) in [-1, 1]: the posterior mean."""
        return self.vae.encode(video.to(self._execution_device)).latent_dist.mode()

    def _normalize(self, packed: torch.Tensor) -> torch.Tensor:
        structure, dynamics = self.transformer.normalize_latents(*self.vae.unpack_latents(packed))
        return self.vae.pack_latents(structure, dynamics)

    def _denormalize(self, packed: torch.Tensor) -> torch.Tensor:
        structure, dynamics = self.transformer.denormalize_latents(*self.vae.unpack_latents(packed))
        return self.vae.pack_latents(structure, dynamics)

    def _noised(self, clean: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """`clean` brought to the noise level of `timestep` (the current step of the schedule)."""
        timestep = timestep.reshape(1).expand(clean.shape[0])
        if hasattr(self.scheduler, "scale_noise"):  # flow matching
            return self.scheduler.scale_noise(clean, timestep, noise)
        return self.scheduler.add_noise(clean, noise, timestep)

    def _fixed_parts(self, batch_size: int, structure_latents, dynamics_latents, device) -> dict[str, torch.Tensor]:
        """Parts to hold fixed, normalised, broadcast to the batch: {"structure": (B, d_S, ...), ...}."""
        fixed = {}
        for part, value, shape in (
            ("structure", structure_latents, self.vae.structure_latent_shape),
            ("dynamics", dynamics_latents, self.vae.dynamics_latent_shape),
        ):
            if value is None:
                continue
            if value.ndim != len(shape) + 1 or tuple(value.shape[1:]) != tuple(shape):
                raise ValueError(f"{part}_latents must be (B, {', '.join(map(str, shape))}), got {tuple(value.shape)}")
            if value.shape[0] not in (1, batch_size):
                raise ValueError(f"{part}_latents has batch {value.shape[0]}; expected 1 or {batch_size}")
            fixed[part] = value.to(device, torch.float32).expand(batch_size, *shape)
        if len(fixed) == 2:
            raise ValueError("holding both parts fixed leaves nothing to generate; decode with the VAE instead")
        if fixed:
            structure, dynamics = self.vae.unpack_latents(torch.zeros(batch_size, self.latent_size, device=device))
            structure, dynamics = self.transformer.normalize_latents(
                fixed.get("structure", structure), fixed.get("dynamics", dynamics)
            )
            fixed = {part: value for part, value in zip(PARTS, (structure, dynamics)) if part in fixed}
        return fixed

    def _with_fixed(self, latents: torch.Tensor, fixed: dict, noise: torch.Tensor, timestep) -> torch.Tensor:
        if not fixed:
            return latents
        parts = dict(zip(PARTS, self.vae.unpack_latents(latents)))
        noise_parts = dict(zip(PARTS, self.vae.unpack_latents(noise)))
        for part, clean in fixed.items():
            parts[part] = clean if timestep is None else self._noised(clean, noise_parts[part], timestep)
        return self.vae.pack_latents(parts["structure"], parts["dynamics"])

    @torch.no_grad()
    def decode_latents(
        self, latents: torch.Tensor, output_type: str = "np", part: str | None = None, num_frames: int | None = None
    ):
        """Packed VAE-space latents (B, N) -> frames in `output_type`; `part` decodes one part alone.

        `num_frames` trims a tiled decode to the length of the clip that was encoded.
        """
        video = self.vae.decode(latents, part=part, num_frames=num_frames).sample.float()
        return self.video_processor.postprocess_video(video, output_type=output_type)

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
    def interrupt(self) -> bool:
        return self._interrupt

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
        structure_latents: torch.Tensor | None = None,
        dynamics_latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int = 32,
    ) -> VidTwinPipelineOutput | tuple:
        r"""
        Args:
            class_labels: class names or ids (class-conditional pipelines).
            prompt, negative_prompt: text (text-conditional pipelines); the negative prompt defaults to "".
            num_videos_per_prompt: videos per label / prompt.
            num_inference_steps: denoising steps.
            guidance_scale: classifier-free guidance weight; <= 1 disables guidance.
            generator: one generator, or one per video (then a batch equals the videos generated one by one).
            latents: initial noise, packed (B, N) with B = number of videos, N = `vae.latent_size`.
            structure_latents: hold the structure fixed (B or 1, d_S, n_q, h_S, w_S) in the VAE's latent space,
                e.g. `vae.encode(clip).structure_dist.mode()`, and generate new dynamics for it.
            dynamics_latents: hold the dynamics fixed (B or 1, d_D, t, w_D + h_D) and generate the structure.
            output_type: "np", "pil", "pt" or "latent" (packed VAE-space latents).
            callback_on_step_end: called as fn(pipe, step, timestep, {"latents": ...}) after each step; it may
                return a dict replacing tensors, and may set `pipe._interrupt = True` to stop early.
            max_sequence_length: tokens per prompt.

        Returns:
            `VidTwinPipelineOutput` with `frames`, or `(frames,)` when `return_dict` is False.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_inputs(class_labels, prompt, negative_prompt, callback_on_step_end_tensor_inputs)
        self._guidance_scale = guidance_scale
        self._interrupt = False
        device = self._execution_device

        # 1. Conditions, repeated per video; the null condition first when guiding.
        conditions: dict[str, torch.Tensor] = {}
        if class_labels is not None:
            ids = torch.tensor(self.get_label_ids(class_labels), device=device)
            conditions["class_labels"] = ids.repeat_interleave(num_videos_per_prompt)
        if prompt is not None:
            prompt = [prompt] if isinstance(prompt, str) else list(prompt)
            if not self.do_classifier_free_guidance:
                negative_prompt = None  # unused without guidance
            elif negative_prompt is None:
                negative_prompt = ""
            if negative_prompt is not None:
                negative_prompt = [negative_prompt] * len(prompt) if isinstance(negative_prompt, str) else list(negative_prompt)
                if len(negative_prompt) != len(prompt):
                    raise ValueError(f"{len(negative_prompt)} negative prompts for {len(prompt)} prompts")
            states, mask, negative_states, negative_mask = self.encode_prompt(
                prompt, negative_prompt, max_sequence_length, device
            )
            conditions["encoder_hidden_states"] = states.repeat_interleave(num_videos_per_prompt, dim=0)
            conditions["encoder_attention_mask"] = mask.repeat_interleave(num_videos_per_prompt, dim=0)
        batch_size = next(iter(conditions.values())).shape[0]
        if self.do_classifier_free_guidance:
            if "class_labels" in conditions:
                null = torch.full_like(conditions["class_labels"], self.transformer.null_class_label)
                conditions["class_labels"] = torch.cat([null, conditions["class_labels"]])
            if "encoder_hidden_states" in conditions:
                for key, negative in (("encoder_hidden_states", negative_states), ("encoder_attention_mask", negative_mask)):
                    negative = negative.repeat_interleave(num_videos_per_prompt, dim=0)
                    conditions[key] = torch.cat([negative, conditions[key]])

        # 2. Initial noise (packed, normalised space) and the parts held fixed.
        shape = (batch_size, self.latent_size)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for {batch_size} videos")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (videos, vae.latent_size), got {tuple(latents.shape)}")
        latents = latents.to(device, torch.float32) * getattr(self.scheduler, "init_noise_sigma", 1.0)
        fixed = self._fixed_parts(batch_size, structure_latents, dynamics_latents, device)
        fixed_noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32) if fixed else None

        # 3. Denoising loop.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)  # lets scale_noise index the schedule without a search per sample
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for step, timestep in enumerate(timesteps):
                if self.interrupt:
                    break
                latents = self._with_fixed(latents, fixed, fixed_noise, timestep)
                model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                if hasattr(self.scheduler, "scale_model_input"):
                    model_input = self.scheduler.scale_model_input(model_input, timestep)
                structure, dynamics = self.vae.unpack_latents(model_input)
                prediction = self.transformer(
                    structure, dynamics, timestep.expand(model_input.shape[0]), **conditions
                )
                prediction = self.vae.pack_latents(prediction.structure, prediction.dynamics).float()
                if self.do_classifier_free_guidance:
                    unconditional, conditional = prediction.chunk(2)
                    prediction = unconditional + guidance_scale * (conditional - unconditional)
                latents = self.scheduler.step(prediction, timestep, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for name in callback_on_step_end_tensor_inputs:  # not a comprehension: it has its own locals()
                        callback_kwargs[name] = locals()[name]
                    callback_outputs = callback_on_step_end(self, step, timestep, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                progress_bar.update()
        latents = self._with_fixed(latents, fixed, fixed_noise, None)

        # 4. Back to the VAE's latent space, then to frames.
        latents = self._denormalize(latents)
        frames = latents if output_type == "latent" else self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        return VidTwinPipelineOutput(frames=frames) if return_dict else (frames,)

    # ------------------------------------------------------------------ decoupled control

    @torch.no_grad()
    def reenact(self, structure_video: torch.Tensor, dynamics_video: torch.Tensor, output_type: str = "np"):
        """Cross-reenactment: the structure of `structure_video` with the dynamics of `dynamics_video`.

        Both (B, 3, T, H, W) in [-1, 1] with the same shape. Returns frames in `output_type` (or packed latents
        for "latent").
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

        `start`/`end` are packed VAE-space latents (1, N), from `encode_video` or from
        `__call__(..., output_type="latent")`. `part="structure"` moves only the structure (the dynamics stay
        those of `start`), `part="dynamics"` only the dynamics, None both. The line runs in the generator's
        normalised space, where both parts have unit scale. Returns frames for (num_points, ...) videos.
        """
        if part not in (None, *PARTS):
            raise ValueError(f"part must be None, 'structure' or 'dynamics', got {part!r}")
        if start.shape != end.shape or start.ndim != 2 or start.shape[0] != 1:
            raise ValueError(f"start and end must both be packed latents (1, N), got {tuple(start.shape)}, {tuple(end.shape)}")
        if num_points < 2:
            raise ValueError("num_points must be at least 2")
        device = self._execution_device
        start, end = self._normalize(start.to(device).float()), self._normalize(end.to(device).float())
        weights = torch.linspace(0, 1, num_points, device=device)[:, None]
        path = dict(zip(PARTS, self.vae.unpack_latents(start + weights * (end - start))))
        if part is not None:
            other = "dynamics" if part == "structure" else "structure"
            path[other] = dict(zip(PARTS, self.vae.unpack_latents(start)))[other].expand_as(path[other])
        latents = self._denormalize(self.vae.pack_latents(path["structure"], path["dynamics"]))
        return latents if output_type == "latent" else self.decode_latents(latents, output_type)
