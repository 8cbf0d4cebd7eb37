# Copyright 2026 The vidtwin-gen authors. MIT License.
"""What our models add to diffusers' `ModelMixin` for saving and loading.

- `save_pretrained` also writes a README.md model card with the Hub's metadata conventions (front matter with
  `library_name: diffusers`, `pipeline_tag`, `tags`, `license`), what the weights were trained on when known,
  the latent geometry and a usage snippet. `vidtwin-gen convert` writes its card through the same function.
- `from_pretrained` refuses weights holding NaN or Inf, naming the tensor: such a model would otherwise load
  and write NaN latents or videos without any error.
"""

import os
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.hub_utils import populate_model_card
from huggingface_hub import ModelCard, ModelCardData

_EXACT_FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


class NonFiniteWeightsError(ValueError):
    """A weight tensor holds NaN or Inf values."""


def check_finite_weights(tensors, source: str) -> None:
    """Raise `NonFiniteWeightsError` naming the first floating tensor of `tensors` (name -> tensor) with NaN/Inf."""
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or tensor.is_meta:
            continue
        values = tensor if tensor.dtype in _EXACT_FLOATS else tensor.float()  # isfinite lacks float8 kernels
        if not torch.isfinite(values).all():
            bad = int((~torch.isfinite(values)).sum())
            raise NonFiniteWeightsError(
                f"{source}: weight {name!r} {tuple(tensor.shape)} holds {bad} NaN/Inf value(s); the file is "
                "corrupt or was saved from a diverged run: use another checkpoint"
            )


def render_model_card(model: "VidTwinModelMixin", trained_on: str | None = None, notes: str | None = None) -> str:
    """The README.md text of `model`'s folder: Hub front matter, what it is, facts, usage, optional notes."""
    facts = model.model_card_facts()
    data = ModelCardData(license="mit", library_name="diffusers", pipeline_tag=facts.get("pipeline_tag"))
    card = populate_model_card(ModelCard(f"---\n{data.to_yaml()}\n---\n"), tags=facts["tags"])
    rows = [("trained on", trained_on or "not recorded (pass `trained_on=` to `save_pretrained`)")]
    rows += facts["rows"]
    rows.append(("parameters", f"{sum(p.numel() for p in model.parameters()):,}"))
    body = [
        f"# {facts['title']}",
        "",
        facts["summary"],
        "",
        "| | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in rows],
        "",
        "## Usage",
        "",
        "```python",
        facts["usage"].strip(),
        "```",
    ]
    if notes:
        body += ["", notes.strip()]
    card.text = "\n".join(body) + "\n"
    return str(card)


class VidTwinModelMixin(ModelMixin):
    """`ModelMixin` plus a model card on save and a NaN/Inf check on load (see the module docstring).

    Subclasses implement `model_card_facts()`.
    """

    def model_card_facts(self) -> dict:
        """title, summary, tags, pipeline_tag (or None), rows [(name, value)] and a usage snippet."""
        raise NotImplementedError

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        save_function: Callable | None = None,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str = "10GB",
        push_to_hub: bool = False,
        trained_on: str | None = None,
        model_card_notes: str | None = None,
        **kwargs,
    ) -> None:
        """diffusers' `save_pretrained` (same arguments), then README.md.

        The arguments are spelled out rather than passed through `*args`, because `DiffusionPipeline.save_pretrained`
        inspects a component's signature to decide whether to hand it `variant`, `max_shard_size` and
        `safe_serialization`.

        Args:
            trained_on: the data the weights were trained on, stated in the model card.
            model_card_notes: a Markdown paragraph appended to the model card (e.g. conversion provenance).
        """
        # With push_to_hub=True diffusers uploads its own generic card; this one is written locally afterwards.
        super().save_pretrained(
            save_directory,
            is_main_process=is_main_process,
            save_function=save_function,
            safe_serialization=safe_serialization,
            variant=variant,
            max_shard_size=max_shard_size,
            push_to_hub=push_to_hub,
            **kwargs,
        )
        if is_main_process:
            (Path(save_directory) / "README.md").write_text(render_model_card(self, trained_on, model_card_notes))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, **kwargs):
        """diffusers' `from_pretrained` (same arguments, eval mode), refusing weights with NaN or Inf values."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        source = Path(str(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        check_finite_weights(model.state_dict(), str(source))
        return loaded
