"""VidTwinPipeline with the schedulers a diffusers user swaps in (`X.from_config(pipe.scheduler.config)`).

The known answer: for data N(MEAN, STD^2) in every coordinate the exact denoiser is analytic, and the probability
flow ODE maps the initial noise z to MEAN + STD * z for the flow path and the DDPM path alike. A transformer
replaced by that exact denoiser must therefore land there with every compatible scheduler, which checks the
timesteps, `init_noise_sigma`, `scale_model_input` and the objective plumbing, not just "it ran".
"""

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from test_pipeline import tiny_pipeline

from vidtwin_gen import AutoencoderVidTwin, VidTwinPipeline, VidTwinTransformer3DModel
from vidtwin_gen.models.transformer_vidtwin import VidTwinTransformerOutput

MEAN, STD = 0.7, 0.5
BETAS = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)  # train_dit's x0 recipe
FLOW = FlowMatchEulerDiscreteScheduler()
DDIM = DDIMScheduler(**BETAS, prediction_type="sample", clip_sample=False, set_alpha_to_one=False)

# name -> (scheduler built from the pipeline's own config, tolerance after 100 steps: first-order solvers converge
# as 1/steps, the multistep/second-order ones to the end of the schedule).
FLOW_SCHEDULERS = {
    "FlowMatchEuler": (lambda: FlowMatchEulerDiscreteScheduler.from_config(FLOW.config), 0.06),
    "FlowMatchEuler shift=3": (lambda: FlowMatchEulerDiscreteScheduler.from_config(FLOW.config, shift=3.0), 0.1),
    "FlowMatchEuler dynamic shifting": (
        lambda: FlowMatchEulerDiscreteScheduler.from_config(FLOW.config, use_dynamic_shifting=True), 0.06),
    "FlowMatchHeun": (lambda: FlowMatchHeunDiscreteScheduler.from_config(FLOW.config), 1e-3),
    "UniPC flow": (lambda: UniPCMultistepScheduler.from_config(
        FLOW.config, prediction_type="flow_prediction", use_flow_sigmas=True), 0.02),
}
X0_SCHEDULERS = {
    "DDIM": (lambda: DDIMScheduler.from_config(DDIM.config), 0.1),
    "DPMSolverMultistep": (lambda: DPMSolverMultistepScheduler.from_config(DDIM.config), 0.02),
    "UniPCMultistep": (lambda: UniPCMultistepScheduler.from_config(DDIM.config), 0.02),
    "EulerDiscrete": (lambda: EulerDiscreteScheduler.from_config(DDIM.config), 0.1),
}


class GaussianDenoiser(VidTwinTransformer3DModel):
    """The exact denoiser for data N(MEAN, STD^2) per coordinate, in the parameterisation of `objective`."""

    objective = "sample"

    def forward(self, structure, dynamics, timestep, return_dict=True, **conditions):
        t = timestep.double().reshape(-1)
        if self.objective == "flow_prediction":  # x_t = (1 - s) x0 + s eps, timestep = 1000 s
            signal, noise = 1 - t / 1000, t / 1000
        else:  # x_t = a x0 + b eps with the DDPM betas; fractional timesteps (Euler) interpolate sigma = b / a
            alphas = DDPMScheduler(**BETAS).alphas_cumprod.double()
            sigma = torch.from_numpy(np.interp(t.numpy(), np.arange(1000), ((1 - alphas) / alphas).sqrt().numpy()))
            signal = 1 / (1 + sigma**2).sqrt()
            noise = sigma * signal
        outputs = []
        for x in (structure, dynamics):
            a, b = (v.reshape(-1, *[1] * (x.ndim - 1)) for v in (signal, noise))
            x = x.double()
            x0 = MEAN + a * STD**2 / (a**2 * STD**2 + b**2) * (x - a * MEAN)  # E[x0 | x_t]
            outputs.append((x - a * x0) / b - x0 if self.objective == "flow_prediction" else x0)
        return VidTwinTransformerOutput(structure=outputs[0].float(), dynamics=outputs[1].float())


def gaussian_pipeline(scheduler, objective: str) -> VidTwinPipeline:
    torch.manual_seed(0)
    transformer = GaussianDenoiser.from_preset("tiny", num_classes=3).eval()
    transformer.objective = objective
    pipe = VidTwinPipeline(vae=AutoencoderVidTwin.from_preset("tiny").eval(), transformer=transformer,
                           scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


NOISE = torch.randn(2, 256, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "objective, trained_with, name",
    [pytest.param("flow_prediction", FLOW, name, id=name) for name in FLOW_SCHEDULERS]
    + [pytest.param("sample", DDIM, name, id=name) for name in X0_SCHEDULERS],
)
def test_every_compatible_scheduler_reaches_the_known_answer(objective, trained_with, name):
    pipe = gaussian_pipeline(trained_with, objective)
    make, tolerance = {**FLOW_SCHEDULERS, **X0_SCHEDULERS}[name]
    pipe.scheduler = make()
    run = lambda steps: pipe(class_labels=[0, 1], latents=NOISE.clone(), num_inference_steps=steps,  # noqa: E731
                             output_type="latent").frames
    latents = run(100)
    error = (latents - (MEAN + STD * NOISE)).abs().max().item()
    assert error < tolerance, f"{name}: max error {error:.4f} from the exact sample"
    assert (run(3) - (MEAN + STD * NOISE)).abs().max() > error  # few steps are further away: the test can tell


def test_dynamic_shifting_gets_mu_from_the_token_count():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    pipe = gaussian_pipeline(FLOW, "flow_prediction")
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(FLOW.config, use_dynamic_shifting=True)
    pipe(class_labels=[0], num_inference_steps=4, output_type="latent", generator=torch.Generator().manual_seed(0))
    reference = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    config = reference.config
    reference.set_timesteps(4, mu=calculate_shift(pipe.transformer.num_tokens, config.base_image_seq_len,
                                                  config.max_image_seq_len, config.base_shift, config.max_shift))
    torch.testing.assert_close(pipe.scheduler.sigmas, reference.sigmas)
    plain = FlowMatchEulerDiscreteScheduler.from_config(FLOW.config)
    plain.set_timesteps(4)
    assert not torch.allclose(plain.sigmas, reference.sigmas)  # mu moved the schedule


@pytest.mark.parametrize("name", list(FLOW_SCHEDULERS) + list(X0_SCHEDULERS))
def test_real_transformer_runs_each_scheduler_deterministically(name):
    flow = name in FLOW_SCHEDULERS
    pipe = tiny_pipeline(FLOW if flow else DDIM)
    pipe.scheduler = {**FLOW_SCHEDULERS, **X0_SCHEDULERS}[name][0]()
    clip = torch.rand(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    structure = pipe.vae.unpack_latents(pipe.encode_video(clip))[0]
    run = lambda: pipe(class_labels=[0, 2], num_inference_steps=3, structure_latents=structure,  # noqa: E731
                       generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="latent").frames
    latents = run()
    assert torch.isfinite(latents).all()
    torch.testing.assert_close(latents, run(), rtol=0, atol=0)
    torch.testing.assert_close(pipe.vae.unpack_latents(latents)[0], structure.expand(2, *structure.shape[1:]))
    assert np.isfinite(pipe.decode_latents(latents)).all()


@pytest.mark.parametrize("trained_with, swapped_in, message", [
    (FLOW, lambda: DDIMScheduler.from_config(FLOW.config), "expects a model predicting 'epsilon', but this pipeline's "
     "transformer predicts 'flow_prediction'"),
    (FLOW, lambda: EulerDiscreteScheduler.from_config(FLOW.config), "Use a flow-matching scheduler"),
    (DDIM, lambda: FlowMatchEulerDiscreteScheduler.from_config(DDIM.config), "expects a model predicting "
     "'flow_prediction', but this pipeline's transformer predicts 'sample'"),
    (DDIM, lambda: DPMSolverMultistepScheduler(prediction_type="epsilon"), "with prediction_type='sample'"),
], ids=["flow->DDIM", "flow->EulerDiscrete", "x0->FlowMatchEuler", "x0->DPMSolver(epsilon)"])
def test_a_scheduler_of_another_objective_is_refused(trained_with, swapped_in, message, tmp_path):
    pipe = tiny_pipeline(trained_with)
    pipe.scheduler = swapped_in()
    with pytest.raises(ValueError, match=message):
        pipe(class_labels=[0], num_inference_steps=2)
    # The objective travels with the saved pipeline, so the refusal holds after loading.
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = VidTwinPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.config.prediction_type == pipe.config.prediction_type
    with pytest.raises(ValueError, match="sampling would give noise"):
        loaded(class_labels=[0], num_inference_steps=2)
