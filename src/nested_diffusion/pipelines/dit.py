"""Nested DiT (class-conditional latent diffusion; Elata et al., WACV 2024, §4.1 and supplementary §C.1).

Inner process: ancestral DDPM with DiT's learned variance (IDDPM learned_range) on round(linspace(t, 0, n))
ending at t = 0, with classifier-free guidance (default 1.5) as part of the denoiser. Outer process:
deterministic DDIM (η = 0). Both run in latent space; the variance prediction is used only by the inner process.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from diffusers import AutoencoderKL, DiTPipeline, DiTTransformer2DModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..core.denoisers import ClassifierFreeGuidance, ModelDenoiser
from ..core.nested import NestedSampler
from ..core.noise_schedule import NoiseSchedule
from ..core.run import RunDefaults
from .adapters import checked_solver, pipeline_run
from .anytime import (AnytimeIterMixin, PipelineInterrupted, anytime_fields, anytime_pairs, callback_inputs,
                      check_call_args, with_anytime_fields)
from .expected_change import dit_identity, resolve_calibration
from .noise import make_noise


NestedImagePipelineOutput = with_anytime_fields(ImagePipelineOutput, "NestedImagePipelineOutput", "ImagePipelineOutput plus where in the nested run the images come from (the AnytimeInfo fields) and the x̂0 latent they were decoded from.", __name__)


class NestedDiTPipeline(AnytimeIterMixin, DiTPipeline):
    r"""Anytime class-conditional generation with Nested Diffusion on a diffusers DiT checkpoint.

    Loads like ``DiTPipeline`` (``from_pretrained``, ``from_pipe``, ``.to()``, ``enable_model_cpu_offload``).
    ``pipe.scheduler`` only supplies the noise schedule and prediction type.

    Guidance channels: by default (``guided_channels=3``) guidance is applied to the first 3 of the 4 latent ε
    channels, as DiT's original ``forward_with_cfg`` (the code behind the paper's ImageNet numbers); the 4th ε
    channel and the variance come from the conditional branch. ``guided_channels=None`` guides all 4, as
    diffusers' ``DiTPipeline``. The null class is ``transformer.config.num_embeds_ada_norm`` (1000 for DiT).
    """

    _callback_tensor_inputs = ["latents"]
    # the run options a call leaves out (core.run): 4 × 50 learned-variance DDPM inner; the outer process stays
    # deterministic DDIM whatever the inner solver (§C.1)
    run_defaults = RunDefaults(outer_steps=4, inner_steps=50, nfe=200, inner_solver="ddpm", outer_eta=0.0)

    def __init__(self, transformer: DiTTransformer2DModel, vae: AutoencoderKL, scheduler: KarrasDiffusionSchedulers,
                 id2label: dict[int, str] | dict[str, str] | None = None):
        super().__init__(transformer=transformer, vae=vae, scheduler=scheduler, id2label=id2label)
        if id2label:  # stock DiTPipeline does not save id2label; registering it makes save/load keep the names
            self.register_to_config(id2label={str(k): v for k, v in id2label.items()})

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """As DiffusionPipeline.from_pipe, keeping the source pipeline's label names."""
        new = super().from_pipe(pipeline, **kwargs)
        if not new.labels and getattr(pipeline, "labels", None):
            names: dict[int, list[str]] = {}
            for name, i in pipeline.labels.items():
                names.setdefault(int(i), []).append(name)
            new.labels = dict(pipeline.labels)
            new.register_to_config(id2label={str(i): ", ".join(n) for i, n in sorted(names.items())})
        return new

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | Sequence[int | str] | torch.Tensor,
        guidance_scale: float = 1.5,
        generator: torch.Generator | list[torch.Generator] | None = None,
        outer_steps: int | None = None,
        inner_steps: int | list[int] | None = None,
        inner_solver: Any = None,
        inner_eta: float | None = None,
        outer_eta: float | str | None = None,
        guided_channels: int | None = 3,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        max_nfe: int | None = None,
        deadline: float | None = None,
        previews: str | None = None,
        grid: str | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        denoiser_hook: Callable | None = None,
        calibration: Any = None,
        num_inference_steps: int | None = None,
        num_inner_steps: int | None = None,
        inner_scheduler: Any = None,
        eta: float | None = None,
        schedule: Any = None,
        total_nfe: int | None = None,
    ):
        r"""Generate images; returns the last anytime update (the final result unless stopped early).

        Args:
            class_labels: class ids, label names from ``id2label`` (see ``pipe.labels``), or a mix; one per image.
            guidance_scale: CFG weight of the inner denoiser (default 1.5, §C.1); CFG is on when > 1.
            guided_channels: 3 (default, DiT original) or None (all latent channels, diffusers).
            outer_steps (default 4; alias ``num_inference_steps``), inner_steps (default 50; alias
                ``num_inner_steps``): 4 × 50 = 200 NFE, the split with the best AUC in the paper's Table 1.
            inner_solver (alias ``inner_scheduler``): "ddpm" (default: learned-variance ancestral sampling),
                "ddim", "dpmpp_2s", "dpmpp_2m", or a diffusers scheduler instance accepting ``timesteps=``
                (``DDPMScheduler(variance_type="learned_range")`` receives the learned variance).
            inner_eta: DDIM η for inner_solver="ddim" (default 0.85). outer_eta (alias ``eta``): default 0.
            generator, latents, output_type ("pil", "np", "pt", "latent"), return_dict: as in ``DiTPipeline``.
            max_nfe, deadline, previews, grid, callback_on_step_end(+_tensor_inputs): as in
                ``NestedStableDiffusionPipeline``; the callback's kwargs["latents"] is the update's x̂0 latent.
            denoiser_hook(denoiser) -> denoiser: wraps this call's model denoiser (profiling, NFE counting).
            calibration: a ``Calibration`` or a file from ``nested-diffusion calibrate --pipeline dit`` for this
                configuration (checked before any model call: ValueError otherwise); every output then carries
                ``expected_change`` (per-sample predicted remaining change, from latent signals: no extra NFE,
                no extra decode). None (default): ``expected_change`` is None.
            schedule, total_nfe (default 200 = 4 × 50): a named nested schedule ("progressive", "uniform") or a
                ``Schedule`` instead of outer/inner steps, as in ``NestedStableDiffusionPipeline``; e.g.
                ``pipe(labels, schedule="progressive", total_nfe=200)``: 20 + 20 + 160 inner steps from t = 999,
                899, 799.
        """
        return self._final_output(locals())

    # ------------------------------------------------------------------------------------------------ internals
    def _label_ids(self, class_labels: Any) -> list[int]:
        n_classes = int(self.transformer.config.num_embeds_ada_norm)
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.reshape(-1).tolist()
        if isinstance(class_labels, (int, str)):
            class_labels = [class_labels]
        if not isinstance(class_labels, (list, tuple)) or not class_labels:
            raise ValueError(f"class_labels: expected a non-empty list of class ids or label names, got "
                             f"{class_labels!r}")
        ids = []
        for label in class_labels:
            if isinstance(label, str):
                if label not in self.labels:
                    known = ", ".join(list(self.labels)[:5]) or "none: the pipeline has no id2label"
                    raise ValueError(f"class_labels: unknown label name {label!r}; known names include {known}")
                ids.append(self.labels[label])
            elif isinstance(label, int) and not isinstance(label, bool) and 0 <= label < n_classes:
                ids.append(int(label))
            else:
                raise ValueError(f"class_labels: {label!r} is not a class id in [0, {n_classes - 1}] or a label name")
        return ids

    def _prepare(self, **a):
        # ---- 1. every check before any model call
        ids = self._label_ids(a["class_labels"])
        tensor_inputs = callback_inputs(a["callback_on_step_end"], a["callback_on_step_end_tensor_inputs"]
                                        if a["callback_on_step_end_tensor_inputs"] is not None else ["latents"])
        check_call_args(a["max_nfe"], a["deadline"], a["previews"], a["output_type"], tensor_inputs,
                     self._callback_tensor_inputs, a["guidance_scale"])
        cfg_ = self.transformer.config
        channels, k = int(cfg_.in_channels), a["guided_channels"]
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= channels):
            raise ValueError(f"guided_channels: must be an integer in [1, {channels}] or None (all), got {k!r}")
        batch, gen = len(ids), a["generator"]
        if isinstance(gen, list) and len(gen) != batch:
            raise ValueError(f"generator: a list of {len(gen)} generators for {batch} images; pass one or one per "
                             f"image")
        shape = (batch, channels, int(cfg_.sample_size), int(cfg_.sample_size))
        if a["latents"] is not None and tuple(a["latents"].shape) != shape:
            raise ValueError(f"latents: expected shape {shape}, got {tuple(a['latents'].shape)}")
        schedule = NoiseSchedule.from_diffusers_config(dict(self.scheduler.config))
        run = checked_solver(pipeline_run(a, self.run_defaults, schedule.num_train_timesteps), schedule)
        self._guidance_scale, self._interrupt = float(a["guidance_scale"]), False
        model = self._dit_fn
        if self._guidance_scale > 1:  # [cond, null] batch, guided on the first k channels (see class docstring)
            null = int(cfg_.num_embeds_ada_norm)
            model = ClassifierFreeGuidance(
                self._dit_fn, self._guidance_scale,
                lambda b, dev: torch.full((b,), null, dtype=torch.long, device=dev), channels=k or channels)
        learned = int(cfg_.out_channels) == 2 * channels
        denoiser = ModelDenoiser(model, schedule, self.scheduler.config.get("prediction_type", "epsilon"), learned)
        sampler = NestedSampler.from_run(denoiser, run)
        self.nested_sampler = sampler
        calibration = resolve_calibration(a["calibration"], sampler.calibration_settings(a["previews"]),
                                          lambda: dit_identity(self, a["guidance_scale"], k))
        # ---- 2. noise and loop
        device, dtype = self._execution_device, self.transformer.dtype
        noise = make_noise(gen, batch, device, dtype)
        x_T = noise.randn(shape[1:]) if a["latents"] is None else a["latents"].to(device=device, dtype=dtype)
        labels = torch.tensor(ids, dtype=torch.long, device=device)
        pairs = anytime_pairs(self, sampler, noise, x_T, labels, a["max_nfe"], a["deadline"], a["previews"],
                              a["callback_on_step_end"], tensor_inputs, dict, lambda returned: None,
                              a["denoiser_hook"], calibration)
        return pairs, dict(output_type=a["output_type"], return_dict=a["return_dict"])

    def _dit_fn(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._interrupt:
            raise PipelineInterrupted()
        return self.transformer(x, timestep=t, class_labels=labels).sample

    def _output(self, update, x0: torch.Tensor, ctx: dict):
        output_type = ctx["output_type"]
        if output_type == "latent":
            images = x0
        else:
            images = self.vae.decode(x0 / self.vae.config.scaling_factor).sample
            images = (images / 2 + 0.5).clamp(0, 1)
            if output_type != "pt":
                images = images.cpu().permute(0, 2, 3, 1).float().numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        if not ctx["return_dict"]:
            return (images,)
        return NestedImagePipelineOutput(images=images, latents=x0, **anytime_fields(update))
