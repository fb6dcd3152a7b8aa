"""Nested Diffusion in Modular Diffusers (``pipelines.modular``): the FLUX.2 and Qwen-Image modular pipelines with a
``NestedScheduler`` as their scheduler component and ``nested_blocks`` for the denoising loop. Tiny random-weight
components (fixtures_any), text conditioning passed as embeddings (the text-encoder block is left out).

Tolerances: one outer step runs the stock schedule through the stock scheduler and the stock sub-blocks, so it is
compared bit for bit. A K × N run is compared with the ``NestedScheduler`` on the classic pipeline of the same
components: the same maths on the same tensors, but two libraries' code paths (modular blocks against the classic
``__call__``), so the stated tolerance is ≤ 1e-5 relative to the output's magnitude (measured: 0.0)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from fixtures_any import BUILDERS, embeds  # noqa: E402
from test_nested_scheduler import Recorder, rel  # noqa: E402

from nested_diffusion.pipelines.modular import NestedDenoiseLoop, nested_blocks  # noqa: E402
from nested_diffusion.pipelines.nested_scheduler import NestedScheduler, NestedSchedulerError  # noqa: E402

torch.set_num_threads(1)
SIZE = dict(height=16, width=16)


def auto_blocks(family):
    import diffusers
    name = {"flux2": "Flux2AutoBlocks", "flux2-klein": "Flux2KleinBaseAutoBlocks",
            "qwen-image": "QwenImageAutoBlocks"}[family]
    blocks = getattr(diffusers, name)()
    blocks.sub_blocks.pop("text_encoder")             # the fixtures have no text encoder: embeddings are passed
    return blocks


def guider(**kw):
    from diffusers.guiders import ClassifierFreeGuidance
    return ClassifierFreeGuidance(guidance_scale=2.0, **kw)


def modular(blocks, pipe, family, scheduler=None, **extra):
    m = blocks.init_pipeline()
    comps = dict(transformer=pipe.transformer, vae=pipe.vae, scheduler=scheduler or pipe.scheduler)
    if family != "flux2":
        comps["guider"] = extra.pop("guider", None) or guider()
    m.update_components(**comps)
    m.set_progress_bar_config(disable=True)
    return m


def modular_kw(family):
    kw = {k: v for k, v in embeds(family).items() if k != "true_cfg_scale"}   # CFG is the guider's here
    return dict(kw, **SIZE, output="latents")


def classic_kw(family):
    kw = dict(embeds(family), **SIZE, output_type="latent")
    if family == "flux2-klein":
        kw["guidance_scale"] = 2.0
    if family == "qwen-image":
        kw["true_cfg_scale"] = 2.0
    return kw


def same_layout(family, pipe, classic, out):
    """(classic, modular) latents in one layout: the classic pipelines' ``output_type="latent"`` is packed tokens
    (FLUX.2 [dev], Qwen-Image) or, for FLUX.2 [klein], the VAE's layout (batch-norm statistics undone,
    unpatchified); the modular pipelines give the patchified / unpacked latents (Qwen-Image: with the VAE's
    latent statistics undone, as its decode step leaves them)."""
    if family == "qwen-image":
        cfg = pipe.vae.config
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean).view(shape).to(out.device, out.dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(shape).to(out.device, out.dtype)
        return pipe._unpack_latents(classic, 16, 16, pipe.vae_scale_factor) / inv_std + mean, out
    if family == "flux2":
        return classic.permute(0, 2, 1).reshape(out.shape), out   # tokens (B, H·W, C) → (B, C, H, W)
    bn = pipe.vae.bn
    mean = bn.running_mean.view(1, -1, 1, 1).to(out.device, out.dtype)
    std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(out.device, out.dtype)
    return classic, pipe._unpatchify_latents(out * std + mean)


def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module", params=["flux2", "flux2-klein", "qwen-image"])
def family(request):
    name = request.param
    pipe = BUILDERS[name]()
    if name == "flux2-klein":                 # the base (CFG) variant: its loop has a guider
        from diffusers import Flux2KleinPipeline
        assert isinstance(pipe, Flux2KleinPipeline)
    return name, pipe


def test_one_outer_step_is_the_stock_modular_pipeline_bit_for_bit(family):
    name, pipe = family
    kw = modular_kw(name)
    stock = modular(auto_blocks(name), pipe, name)(**kw, num_inference_steps=4, generator=gen())
    nested = modular(nested_blocks(auto_blocks(name)), pipe, name, NestedScheduler(pipe.scheduler, outer_steps=1))
    one = nested(**kw, num_inference_steps=4, generator=gen())
    assert torch.equal(one, stock)
    # the same blocks with the stock scheduler: the stock loop (one run)
    plain = modular(nested_blocks(auto_blocks(name)), pipe, name)(**kw, num_inference_steps=4, generator=gen())
    assert torch.equal(plain, stock)
    # and the stock modular pipeline is the classic pipeline (so the comparison below is of like with like)
    classic = pipe(**classic_kw(name), num_inference_steps=4, generator=gen()).images
    assert torch.equal(*same_layout(name, pipe, classic, stock))


def test_k_by_n_equals_the_nested_scheduler_on_the_classic_pipeline(family):
    name, pipe = family
    K, N = 3, 4
    m = modular(nested_blocks(auto_blocks(name)), pipe, name, NestedScheduler(pipe.scheduler, outer_steps=K))
    out = m(**modular_kw(name), num_inference_steps=N, generator=gen())
    orig = pipe.scheduler
    pipe.scheduler = NestedScheduler(orig, outer_steps=K)
    try:
        classic = pipe(**classic_kw(name), num_inference_steps=N, generator=gen()).images
    finally:
        pipe.scheduler = orig
    ref, got = same_layout(name, pipe, classic, out)
    assert rel(got, ref) <= 1e-5
    stock = modular(auto_blocks(name), pipe, name)(**modular_kw(name), num_inference_steps=N, generator=gen())
    assert (out - stock).abs().max() > 0.05                  # the nested run is another sampler (not vacuous)


def calls_per_step(rec: Recorder) -> list[int]:
    """Transformer calls per denoising step (consecutive calls at one timestep: 2 with CFG on, 1 with it off)."""
    counts, last = [], None
    for c in rec.calls:
        t = float(c["timestep"].flatten()[0])
        if t == last:
            counts[-1] += 1
        else:
            counts.append(1)
        last = t
    return counts


@pytest.mark.parametrize("name", ["flux2-klein", "qwen-image"])
def test_guider_start_stop_fractions_apply_per_inner_run(name):
    pipe = BUILDERS[name]()
    K, N = 3, 4
    kw = modular_kw(name)
    rec = Recorder(pipe.transformer)
    try:
        nested = modular(nested_blocks(auto_blocks(name)), pipe, name, NestedScheduler(pipe.scheduler, outer_steps=K),
                         guider=guider(stop=0.5))
        nested(**kw, num_inference_steps=N, generator=gen())
        per_run = calls_per_step(rec)
        rec.calls.clear()
        # the stock loop with the nested scheduler: the guider sees the global index over K·N steps
        plain = modular(auto_blocks(name), pipe, name, NestedScheduler(pipe.scheduler, outer_steps=K),
                        guider=guider(stop=0.5))
        plain(**kw, num_inference_steps=N, generator=gen())
        global_ = calls_per_step(rec)
    finally:
        rec.close()
    assert per_run == [2, 2, 1, 1] * K
    assert global_ == [2] * (K * N // 2) + [1] * (K * N // 2)


def test_what_is_refused(family):
    name, pipe = family
    from diffusers import ZImageAutoBlocks
    with pytest.raises(ValueError, match=r"blocks: the denoising loop \w+ is not one nested_blocks knows"):
        nested_blocks(ZImageAutoBlocks())
    with pytest.raises(TypeError, match="blocks: expected Modular Diffusers blocks"):
        nested_blocks(pipe)
    blocks = nested_blocks(auto_blocks(name))
    assert isinstance(blocks.sub_blocks["denoise"], type(auto_blocks(name).sub_blocks["denoise"]))
    loops = []

    def walk(b):
        if isinstance(b, NestedDenoiseLoop):
            loops.append(b)
        for s in (getattr(b, "sub_blocks", None) or {}).values():
            walk(s)
    walk(blocks)
    assert loops                                            # the copy's loops are nested; the original's are not
    walk_orig = []
    auto = auto_blocks(name)

    def walk2(b):
        if isinstance(b, NestedDenoiseLoop):
            walk_orig.append(b)
        for s in (getattr(b, "sub_blocks", None) or {}).values():
            walk2(s)
    walk2(auto)
    assert not walk_orig
    # a step list that is not the scheduler's (set-timesteps re-set behind the nested scheduler's back)
    from nested_diffusion.pipelines.modular import run_bounds
    nested = NestedScheduler(pipe.scheduler, outer_steps=2)
    nested.set_timesteps(3, mu=0.5)
    with pytest.raises(NestedSchedulerError, match=r"timesteps: the denoise loop got 5 timesteps, not the "
                                                   r"NestedScheduler's 6"):
        run_bounds(nested, nested.timesteps[1:])
    assert run_bounds(nested, nested.timesteps) == [(0, 3), (3, 6)]
