"""`VeltrixPipeline`: observe frames, evolve the world state, render the future.

encoder (MPE) -> evolver (TRE, open-loop rollout) -> decoder (MGD, flow matching sampled with
`FlowMatchEulerDiscreteScheduler`). Every future frame of every trajectory is decoded in one batch per Euler
step.
"""

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .input_validation import check_finite, check_increasing, check_shape
from .modeling_veltrix_decoder import VeltrixDecoderModel
from .modeling_veltrix_encoder import VeltrixEncoderModel
from .modeling_veltrix_evolver import VeltrixEvolverModel

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class VeltrixPipelineOutput(BaseOutput):
    """
    Args:
        frames: the future frames; `"pil"`: a list (per trajectory) of lists of `PIL.Image.Image`; `"np"`: an
            array `(B, num_future_steps, H, W, C)` in [0, 1]; `"pt"`: a tensor `(B, num_future_steps, C, H, W)`
            in [0, 1]; `"latent"`: `None`.
        units (`torch.Tensor` of shape `(B, num_future_steps, U, D)`): the evolved state units.
        timestamps (`torch.Tensor` of shape `(B, num_future_steps)`): the times of the future steps in seconds.
    """

    frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor | None
    units: torch.Tensor
    timestamps: torch.Tensor


class VeltrixPipeline(DiffusionPipeline):
    r"""World rollout: context frames (and optionally actions and timestamps) in, future frames out.

    Args:
        encoder ([`VeltrixEncoderModel`]): frames -> state units.
        evolver ([`VeltrixEvolverModel`]): evolves the units through time.
        decoder ([`VeltrixDecoderModel`]): renders a step's units as a frame.
        scheduler ([`FlowMatchEulerDiscreteScheduler`]): the flow-matching sampler of the decoder.
    """

    model_cpu_offload_seq = "encoder->evolver->decoder"

    def __init__(
        self,
        encoder: VeltrixEncoderModel,
        evolver: VeltrixEvolverModel,
        decoder: VeltrixDecoderModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ):
        super().__init__()
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(
                f"`scheduler` must be a FlowMatchEulerDiscreteScheduler (the decoder is a flow-matching model), "
                f"got {type(scheduler).__name__}."
            )
        self.register_modules(encoder=encoder, evolver=evolver, decoder=decoder, scheduler=scheduler)
        self.image_processor = VaeImageProcessor(do_resize=False, do_normalize=True)

    def check_inputs(
        self,
        frames: torch.Tensor,
        actions: torch.Tensor | None,
        timestamps: torch.Tensor | None,
        num_future_steps: int,
        num_inference_steps: int,
        output_type: str,
    ) -> None:
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        for name, value in (("num_future_steps", num_future_steps), ("num_inference_steps", num_inference_steps)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
        self.encoder.check_pixel_values(frames)
        b, t = frames.shape[:2]
        if actions is not None:
            check_shape("actions", actions, (b, t + num_future_steps, self.evolver.config.action_dim))
            check_finite("actions", actions)
        if timestamps is not None:
            check_shape("timestamps", timestamps, (b, t + num_future_steps))
            check_finite("timestamps", timestamps)
            check_increasing("timestamps", timestamps)

    def prepare_latents(
        self, num_frames: int, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Gaussian noise (num_frames, C, H, W) at flow time σ = 1."""
        config = self.decoder.config
        shape = (num_frames, config.in_channels, config.sample_size, config.sample_size)
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    def decode_units(
        self,
        units: torch.Tensor,
        num_inference_steps: int,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        previous_frame: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Samples frames (N, C, H, W) in [-1, 1] for units (N, U, D) with `num_inference_steps` Euler steps,
        starting from `latents` (N, C, H, W) at σ = 1, or from noise drawn with `generator`. A decoder with
        `temporal_context` also takes each frame's `previous_frame` (N, C, H, W)."""
        check_shape("units", units, ("N", "U", self.decoder.config.cross_attention_dim))
        check_finite("units", units)
        if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an int >= 1, got {num_inference_steps!r}.")
        if latents is None:
            latents = self.prepare_latents(units.shape[0], units.dtype, units.device, generator)
        self.scheduler.set_timesteps(num_inference_steps, device=units.device)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for t in self.scheduler.timesteps:
                velocity = self.decoder(latents, t.expand(latents.shape[0]), units, previous_frame).sample
                latents = self.scheduler.step(velocity, t, latents).prev_sample
                progress_bar.update()
        return latents.clamp(-1.0, 1.0)

    def decode_rollout(
        self,
        units: torch.Tensor,
        last_context_frame: torch.Tensor,
        num_inference_steps: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Frames (B·n, C, H, W) for rolled-out units (B, n, U, D): all steps in one batch, or, for a decoder with
        `temporal_context`, step by step in time (batched over trajectories), each conditioned on the frame
        decoded before it (the last context frame (B, C, H, W) for the first)."""
        b, n = units.shape[:2]
        latents = self.prepare_latents(b * n, units.dtype, units.device, generator)
        if not self.decoder.config.temporal_context:
            return self.decode_units(units.flatten(0, 1), num_inference_steps, latents=latents)
        latents, decoded = latents.reshape(b, n, *latents.shape[1:]), []
        previous = last_context_frame.to(units.dtype)
        for step in range(n):
            previous = self.decode_units(units[:, step], num_inference_steps, latents=latents[:, step],
                                         previous_frame=previous)
            decoded.append(previous)
        return torch.stack(decoded, dim=1).flatten(0, 1)

    @torch.no_grad()
    def __call__(
        self,
        frames: torch.Tensor,
        actions: torch.Tensor | None = None,
        timestamps: torch.Tensor | None = None,
        num_future_steps: int = 8,
        num_inference_steps: int = 8,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> VeltrixPipelineOutput | tuple:
        r"""
        Args:
            frames (`torch.Tensor` of shape `(B, T, C, H, W)`): context frames in [-1, 1].
            actions (`torch.Tensor` of shape `(B, T + num_future_steps, A)`, *optional*): the action at every
                step, context and future; `None` evolves freely.
            timestamps (`torch.Tensor` of shape `(B, T + num_future_steps)`, *optional*): strictly increasing
                times in seconds of context and future steps; defaults to the evolver's reference interval.
            num_future_steps (`int`, defaults to 8): how many future steps to evolve and render.
            num_inference_steps (`int`, defaults to 8): Euler steps of the flow-matching decoder.
            generator (`torch.Generator`, *optional*): makes the decoder's noise reproducible.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"` (units only).
            return_dict (`bool`, defaults to `True`): return a [`VeltrixPipelineOutput`] instead of a tuple.

        Examples:

        ```py
        >>> out = pipe(frames, num_future_steps=24, output_type="np")
        >>> out.frames.shape  # (B, 24, H, W, C)
        ```
        """
        self.check_inputs(frames, actions, timestamps, num_future_steps, num_inference_steps, output_type)
        device = self._execution_device
        frames = frames.to(device=device, dtype=self.encoder.dtype)
        actions = None if actions is None else actions.to(device=device, dtype=self.evolver.dtype)
        timestamps = None if timestamps is None else timestamps.to(device=device, dtype=self.evolver.dtype)

        context = self.encoder(frames).units
        rollout = self.evolver.rollout(context, num_future_steps, conditions=actions, timestamps=timestamps)
        units = rollout.units
        if output_type == "latent":
            images = None
        else:
            b, n = units.shape[:2]
            decoded = self.decode_rollout(units.to(self.decoder.dtype), frames[:, -1], num_inference_steps, generator)
            processed = self.image_processor.postprocess(decoded, output_type=output_type)
            if output_type == "pil":
                images = [processed[i * n : (i + 1) * n] for i in range(b)]
            else:
                images = processed.reshape(b, n, *processed.shape[1:])
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, units, rollout.timestamps
        return VeltrixPipelineOutput(frames=images, units=units, timestamps=rollout.timestamps)


__all__ = ["VeltrixPipeline", "VeltrixPipelineOutput"]
