"""VidTwinPipeline for videos of any length: chunks of the VAE's T frames made one after another, each seeing the
clean latents of the chunks before it; continuation of a clip; held parts and conditions per chunk.

Most tests check the pipeline's side of the contract with the tiny context-free transformer, the model's
`num_context_chunks` patched in and its forward wrapped by a spy that records the context it is given (the spy
drops the context before the real forward, so these tests do not depend on how the model uses it).
"""

import io

import numpy as np
import pytest
import torch
from helpers import perturb_
from test_pipeline import STEPS, tiny_pipeline

from vidtwin_gen import VidTwinPipeline

T = 8  # the tiny VAE's frames per chunk


class ForwardSpy:
    """Stands in for `transformer.forward`: records every call's context and class labels, runs the real forward
    without the context."""

    def __init__(self, forward):
        self.forward, self.calls = forward, []

    def __call__(self, structure, dynamics, timestep, context_structure=None, context_dynamics=None,
                 context_mask=None, **kwargs):
        self.calls.append({"batch": structure.shape[0], "class_labels": kwargs.get("class_labels"),
                           "context_structure": context_structure, "context_dynamics": context_dynamics})
        return self.forward(structure, dynamics, timestep, **kwargs)


def spy_on(pipe, monkeypatch, context_chunks: int = 0) -> ForwardSpy:
    spy = ForwardSpy(pipe.transformer.forward)
    monkeypatch.setattr(pipe.transformer, "forward", spy)
    monkeypatch.setattr(VidTwinPipeline, "num_context_chunks", property(lambda self: context_chunks))
    return spy


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def generators(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def run(pipe, labels=(0,), **kwargs):
    return pipe(class_labels=list(labels), num_inference_steps=STEPS, generator=generators(len(labels)), **kwargs).frames


def chunk_calls(spy, num_chunks):
    """The spy's calls grouped per chunk (STEPS forward calls each)."""
    assert len(spy.calls) == num_chunks * STEPS
    return [spy.calls[k * STEPS:(k + 1) * STEPS] for k in range(num_chunks)]


# ------------------------------------------------------------------ length, trimming, output types


def test_default_is_one_chunk_and_the_first_chunk_of_a_long_video_is_it(pipe):
    one = run(pipe, [0, 2])
    np.testing.assert_array_equal(run(pipe, [0, 2], num_frames=T), one)
    long = run(pipe, [0, 2], num_frames=3 * T, context_chunks=0, seam_blend_frames=0)
    assert long.shape == (2, 3 * T, 32, 32, 3)
    np.testing.assert_array_equal(long[:, :T], one)  # chunk 1 draws its noise first from the same generators
    assert np.abs(long[:, T:2 * T] - long[:, :T]).max() > 1e-3  # later chunks are new samples
    blended = run(pipe, [0, 2], num_frames=3 * T, context_chunks=0)  # the seams blended over T/4 frames a side
    np.testing.assert_array_equal(blended[:, :T - T // 4], one[:, :T - T // 4])


def test_seams_are_blended_as_the_vae_blends_a_tiled_decode(pipe):
    plain = run(pipe, [0, 1], num_frames=3 * T, context_chunks=0, seam_blend_frames=0)
    latents = run(pipe, [0, 1], num_frames=3 * T, context_chunks=0, output_type="latent")
    with torch.no_grad():
        expected = pipe.vae.decode(pipe.denormalize_latents(latents), blend_num_frames=3).sample
    expected = pipe.video_processor.postprocess_video(expected, output_type="np")
    blended = run(pipe, [0, 1], num_frames=3 * T, context_chunks=0, seam_blend_frames=3)
    np.testing.assert_allclose(blended, expected, atol=1e-5)
    np.testing.assert_allclose(pipe.decode_latents(latents, seam_blend_frames=3), blended, atol=1e-5)
    np.testing.assert_allclose(pipe.decode_latents(latents, seam_blend_frames=0), plain, atol=1e-5)
    changed = np.flatnonzero(np.abs(blended - plain).max(axis=(0, 2, 3, 4)) > 0)
    assert set(changed) == {seam + offset for seam in (T, 2 * T) for offset in range(-3, 3)}  # nothing else
    for bad, error in ((T // 2 + 1, ValueError), (-1, ValueError), (1.5, TypeError)):
        with pytest.raises(error, match="seam_blend_frames"):
            run(pipe, num_frames=2 * T, context_chunks=0, seam_blend_frames=bad)


@pytest.mark.parametrize("num_frames", [1, 5, 12, 20])
def test_num_frames_not_a_multiple_of_t_is_trimmed(pipe, num_frames):
    chunks = -(-num_frames // T)
    full = run(pipe, num_frames=chunks * T, context_chunks=0)
    frames = run(pipe, num_frames=num_frames, context_chunks=0)
    assert frames.shape == (1, num_frames, 32, 32, 3)
    np.testing.assert_array_equal(frames, full[:, :num_frames])
    assert run(pipe, num_frames=num_frames, context_chunks=0, output_type="pt").shape == (1, num_frames, 3, 32, 32)
    pil = run(pipe, num_frames=num_frames, context_chunks=0, output_type="pil")
    assert len(pil) == 1 and len(pil[0]) == num_frames


def test_latent_output_of_a_long_video_is_packed_like_a_tiled_encode(pipe):
    frames = run(pipe, [0, 1], num_frames=20, context_chunks=0)
    latents = run(pipe, [0, 1], num_frames=20, context_chunks=0, output_type="latent")
    assert latents.shape == (2, 3 * pipe.vae.latent_size)
    np.testing.assert_allclose(pipe.decode_latents(latents, num_frames=20), frames, atol=1e-5)
    chunks = pipe.split_chunk_latents(latents)
    assert [tuple(c.shape) for c in chunks] == [(2, pipe.vae.latent_size)] * 3
    torch.testing.assert_close(pipe.join_chunk_latents(chunks), latents)
    # Given noise for every chunk, packed the same way, reproduces the run.
    noise = torch.randn(2, 3 * pipe.vae.latent_size, generator=torch.Generator().manual_seed(1))
    again = pipe(class_labels=[0, 1], num_inference_steps=STEPS, num_frames=20, context_chunks=0, latents=noise)
    np.testing.assert_array_equal(again.frames, pipe(class_labels=[0, 1], num_inference_steps=STEPS, num_frames=20,
                                                     context_chunks=0, latents=noise.clone()).frames)
    with pytest.raises(ValueError, match=r"latents must have shape \(2, 768\) \(videos, 3 chunks"):
        pipe(class_labels=[0, 1], num_frames=20, context_chunks=0, latents=torch.zeros(2, 256))


def test_progress_bar_counts_chunks_times_steps():
    pipe = tiny_pipeline()
    shown = io.StringIO()
    pipe.set_progress_bar_config(file=shown, disable=False, mininterval=0)
    run(pipe, num_frames=20, context_chunks=0)
    last = shown.getvalue().split("\r")[-1]
    assert f"{3 * STEPS}/{3 * STEPS}" in last and "chunk 3/3" in last


def test_each_chunk_is_decoded_on_its_own_as_soon_as_it_is_made(pipe, monkeypatch):
    decoded, order = [], []
    real_decode, real_step = pipe.vae.decode, pipe.scheduler.step
    monkeypatch.setattr(pipe.vae, "decode", lambda latents, *a, **k: (decoded.append(tuple(latents.shape)),
                                                                      order.append("decode"),
                                                                      real_decode(latents, *a, **k))[-1])
    monkeypatch.setattr(pipe.scheduler, "step", lambda *a, **k: (order.append("step"), real_step(*a, **k))[-1])
    frames = run(pipe, [0, 1], num_frames=4 * T, context_chunks=0)
    assert frames.shape[1] == 4 * T
    assert decoded == [(2, pipe.vae.latent_size)] * 4  # never several chunks at once
    assert order == (["step"] * STEPS + ["decode"]) * 4  # decoded before the next chunk starts


def test_interrupt_stops_after_the_current_chunk(pipe):
    def callback(pipeline, step, timestep, tensors):
        if pipeline.current_chunk == 1 and step == 0:
            pipeline._interrupt = True
        return {}

    frames = run(pipe, num_frames=4 * T, context_chunks=0, callback_on_step_end=callback)
    assert frames.shape[1] == 2 * T  # chunk 1 ends early, chunks 2 and 3 are never made


# ------------------------------------------------------------------ context


def test_each_chunk_sees_the_clean_latents_of_the_chunks_before_it(monkeypatch):
    pipe = tiny_pipeline()
    spy = spy_on(pipe, monkeypatch, context_chunks=2)
    latents = run(pipe, [0, 1], num_frames=4 * T, output_type="latent")
    chunks = pipe.split_chunk_latents(latents)
    for k, calls in enumerate(chunk_calls(spy, 4)):
        seen = list(range(max(0, k - 2), k))  # the most recent 2, oldest first
        for call in calls:
            if not seen:
                assert call["context_structure"] is None and call["context_dynamics"] is None
                continue
            structure, dynamics = call["context_structure"], call["context_dynamics"]
            assert structure.shape == (4, len(seen), 4, 8, 2, 2) and dynamics.shape == (4, len(seen), 4, 8, 4)
            for slot, previous in enumerate(seen):
                expected_s, expected_d = pipe.vae.unpack_latents(chunks[previous])
                # Guidance doubles the batch: the same context in the unconditional and the conditional half.
                for half in (structure[:2], structure[2:]):
                    torch.testing.assert_close(half[:, slot], expected_s)
                for half in (dynamics[:2], dynamics[2:]):
                    torch.testing.assert_close(half[:, slot], expected_d)


def test_context_chunks_limits_the_history_and_zero_switches_it_off(monkeypatch):
    pipe = tiny_pipeline()
    spy = spy_on(pipe, monkeypatch, context_chunks=2)
    run(pipe, num_frames=3 * T, context_chunks=1)
    sizes = [None if c["context_structure"] is None else c["context_structure"].shape[1] for c in spy.calls]
    assert sizes == [None] * STEPS + [1] * 2 * STEPS
    spy.calls.clear()
    naive = run(pipe, num_frames=3 * T, context_chunks=0, seam_blend_frames=0)
    assert all(c["context_structure"] is None for c in spy.calls)
    np.testing.assert_array_equal(naive[:, :T], run(pipe))
    with pytest.raises(ValueError, match=r"context_chunks must be an integer in \[0, 2\].*got 3"):
        run(pipe, num_frames=3 * T, context_chunks=3)


def test_a_context_free_model_refuses_long_videos_unless_asked_for_independent_chunks(pipe):
    with pytest.raises(ValueError, match=r"num_frames=20 \(3 chunks of 8 frames\) needs a long-video model.*"
                                         r"train_configs/dit/\*_long.yaml.*context_chunks=0"):
        run(pipe, num_frames=20)
    with pytest.raises(ValueError, match=r"video=\.\.\. \(continuing a clip\) needs a long-video model"):
        run(pipe, video=torch.zeros(1, 3, T, 32, 32))
    with pytest.raises(ValueError, match=r"context_chunks must be an integer in \[0, 0\]"):
        run(pipe, num_frames=20, context_chunks=1)
    with pytest.raises(ValueError, match="num_frames must be an integer >= 1, got 0"):
        run(pipe, num_frames=0)
    assert run(pipe, num_frames=20, context_chunks=0).shape[1] == 20


# ------------------------------------------------------------------ continuation


@pytest.mark.parametrize("clip_frames, context_chunks, used", [(T, 1, [(0, T)]), (13, 2, [(5, 13)]),
                                                                (19, 2, [(3, 11), (11, 19)]), (19, 1, [(11, 19)])])
def test_continuation_encodes_the_clip_s_last_whole_chunks_as_context(monkeypatch, clip_frames, context_chunks, used):
    pipe = tiny_pipeline()
    spy = spy_on(pipe, monkeypatch, context_chunks=2)
    clip = torch.rand(1, 3, clip_frames, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    new = run(pipe, [0, 2], video=clip, num_frames=12, context_chunks=context_chunks)
    # The output holds only the new frames, num_frames of them.
    assert new.shape == (2, 12, 32, 32, 3)
    first = chunk_calls(spy, 2)[0][0]
    assert first["context_structure"].shape[1] == len(used)
    for slot, (start, end) in enumerate(used):
        expected_s, expected_d = pipe.vae.unpack_latents(pipe.encode_video(clip[:, :, start:end]))
        for row in range(4):  # the clip (batch 1) continues in both videos, in both guidance halves
            torch.testing.assert_close(first["context_structure"][row, slot], expected_s[0])
            torch.testing.assert_close(first["context_dynamics"][row, slot], expected_d[0])


def test_continuation_errors(monkeypatch):
    pipe = tiny_pipeline()
    spy_on(pipe, monkeypatch, context_chunks=1)
    with pytest.raises(ValueError, match="video has 5 frames; continuing a clip needs at least 8"):
        run(pipe, video=torch.zeros(1, 3, 5, 32, 32))
    with pytest.raises(ValueError, match=r"video must be a tensor \(B, 3, F, H, W\)"):
        run(pipe, video=torch.zeros(3, 8, 32, 32))
    with pytest.raises(ValueError, match="video has batch 3; expected 1"):
        run(pipe, [0, 1], video=torch.zeros(3, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="which context_chunks=0 switches off"):
        run(pipe, video=torch.zeros(1, 3, 8, 32, 32), context_chunks=0)


# ------------------------------------------------------------------ decoupled control across chunks


def test_held_structure_is_identical_in_every_chunk(pipe):
    clip = torch.rand(1, 3, T, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    structure, _ = pipe.vae.unpack_latents(pipe.encode_video(clip))
    latents = run(pipe, [0, 1], num_frames=3 * T, context_chunks=0, structure_latents=structure, output_type="latent")
    dynamics = []
    for chunk in pipe.split_chunk_latents(latents):
        chunk_structure, chunk_dynamics = pipe.vae.unpack_latents(chunk)
        torch.testing.assert_close(chunk_structure, structure.expand_as(chunk_structure), atol=1e-5, rtol=1e-5)
        dynamics.append(chunk_dynamics)
    assert (dynamics[1] - dynamics[0]).abs().max() > 1e-2  # the dynamics are new in every chunk


def test_held_dynamics_chunk_by_chunk_from_a_tiled_encode():
    pipe = tiny_pipeline()
    pipe.vae.enable_tiling()
    clip = torch.rand(1, 3, 3 * T, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    _, dynamics = pipe.vae.unpack_latents(pipe.encode_video(clip))  # (1, d_D, 3t, w_D + h_D)
    latents = run(pipe, [2], num_frames=3 * T, context_chunks=0, dynamics_latents=dynamics, output_type="latent")
    t = pipe.vae.dynamics_latent_shape[1]
    for k, chunk in enumerate(pipe.split_chunk_latents(latents)):
        torch.testing.assert_close(pipe.vae.unpack_latents(chunk)[1], dynamics[:, :, k * t:(k + 1) * t],
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"dynamics_latents must be \(B, 4, 8, 4\), held in every chunk, or "
                                         r"\(B, 4, 8\*K, 4\) with K = 2"):
        run(pipe, num_frames=2 * T, context_chunks=0, dynamics_latents=dynamics)


def test_class_switches_at_chunk_boundaries(monkeypatch):
    pipe = tiny_pipeline()
    spy = spy_on(pipe, monkeypatch)
    null = pipe.transformer.null_class_label
    pipe(chunk_class_labels=[[0, 1], [0, 1], ["GreenTriangleSpin", 2]], num_frames=20, context_chunks=0,
         num_inference_steps=STEPS)
    expected = [[null, null, 0, 1], [null, null, 0, 1], [null, null, 2, 2]]
    for calls, labels in zip(chunk_calls(spy, 3), expected):
        assert all(call["class_labels"].tolist() == labels for call in calls)
    # The first chunk of a switching run is the single-class run's.
    mixed = pipe(chunk_class_labels=[1, 0], num_frames=2 * T, context_chunks=0, num_inference_steps=STEPS,
                 generator=generators(1), seam_blend_frames=0).frames
    assert mixed.shape[1] == 2 * T
    np.testing.assert_array_equal(mixed[:, :T], run(pipe, [1]))


def test_per_chunk_condition_errors(pipe):
    with pytest.raises(ValueError, match=r"chunk_class_labels needs one entry per chunk generated: 3 .*got 2 entries"):
        pipe(chunk_class_labels=[0, 1], num_frames=20, context_chunks=0)
    with pytest.raises(ValueError, match="pass class_labels .* or chunk_class_labels .*, not both"):
        pipe(class_labels=[0], chunk_class_labels=[0, 1], num_frames=16, context_chunks=0)
    with pytest.raises(ValueError, match="every chunk needs the same number of videos: chunk 1's condition gives 2, "
                                         "chunk 0's 1"):
        pipe(chunk_class_labels=[0, [1, 2]], num_frames=16, context_chunks=0, num_inference_steps=1)
    with pytest.raises(ValueError, match="unknown class name 'Nope'"):
        pipe(chunk_class_labels=[0, "Nope"], num_frames=16, context_chunks=0, num_inference_steps=1)


def test_prompt_switches_at_chunk_boundaries(monkeypatch):
    from test_pipeline import tiny_text_pipeline

    pipe = tiny_text_pipeline()
    states = []
    real = pipe.transformer.forward
    monkeypatch.setattr(pipe.transformer, "forward",
                        lambda *a, **k: (states.append(k["encoder_hidden_states"]), real(*a, **k))[-1])
    prompts = ["a red square drifting", "a blue circle bouncing"]
    pipe(chunk_prompts=prompts, num_frames=2 * T, context_chunks=0, num_inference_steps=1)
    for state, prompt in zip(states, prompts):
        expected = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)[0]
        torch.testing.assert_close(state[1:], expected)  # after the negative (empty) prompt
    with pytest.raises(ValueError, match="chunk_prompts needs one entry per chunk generated: 2"):
        pipe(chunk_prompts=prompts[:1], num_frames=2 * T, context_chunks=0)


# ------------------------------------------------------------------ with a real context model


def test_a_context_model_uses_its_context_end_to_end(tmp_path):
    pipe = tiny_pipeline(num_context_chunks=2)
    perturb_(pipe.transformer, seed=1, scale=0.2)  # a context path strong enough to see in the frames
    with_context = run(pipe, [0, 1], num_frames=3 * T, seam_blend_frames=0)
    independent = run(pipe, [0, 1], num_frames=3 * T, context_chunks=0, seam_blend_frames=0)
    assert with_context.shape == (2, 3 * T, 32, 32, 3) and np.isfinite(with_context).all()
    np.testing.assert_array_equal(with_context[:, :T], independent[:, :T])  # the first chunk has no context
    assert np.abs(with_context[:, T:] - independent[:, T:]).max() > 1e-3  # the later ones depend on it
    clips = torch.rand(2, 3, T, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    continued = [run(pipe, [0], video=clip[None], output_type="latent") for clip in clips]
    assert (continued[0] - continued[1]).abs().max() > 1e-3  # what comes next depends on the clip
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = VidTwinPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.num_context_chunks == 2
    np.testing.assert_allclose(run(loaded, [0, 1], num_frames=3 * T, seam_blend_frames=0), with_context, atol=1e-5)
