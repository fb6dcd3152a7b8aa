"""One run, resolved once (core.run): the same options give the same RunConfig from every surface, the defaults
come from the family, and errors name the option as the caller spelled it."""
import json

import pytest

from nested_diffusion import NestedSampler, cli
from nested_diffusion.bundled import RUN_DEFAULTS, load_unet, make_denoiser
from nested_diffusion.cli.run_args import run_from_args
from nested_diffusion.core.run import RunDefaults, resolve_run
from nested_diffusion.families import family_names, get_family


def test_the_ddim_inner_eta_is_the_same_from_python_the_cli_and_the_sd_pipeline(tmp_path):
    den = make_denoiser(load_unet())
    python = NestedSampler(den, outer_steps=2, inner_steps=3, inner_solver="ddim")
    assert python.config.inner_eta == 0.85 and python.solver.inner.eta == 0.85
    assert cli.main(["generate", "--out", str(tmp_path), "--classes", "1", "--outer", "2", "--inner", "3",
                     "--solver", "ddim", "--quiet", "--threads", "1"]) == 0
    assert json.loads((tmp_path / "updates.json").read_text())["settings"]["inner_eta"] == 0.85
    pytest.importorskip("diffusers")
    from nested_diffusion.pipelines.adapters import pipeline_run
    sd = pipeline_run(dict(outer_steps=2, inner_steps=3, inner_solver="ddim"), get_family("sd").run_defaults())
    assert sd.inner_eta == 0.85 and sd.build_inner().eta == 0.85


def test_the_same_options_resolve_to_the_same_run_on_every_surface():
    class Args:  # what argparse gives `generate --schedule progressive --nfe 60 --solver ddim --inner-eta 0.5`
        schedule, nfe, first, outer, inner, solver, inner_eta = "progressive", 60, None, None, None, "ddim", 0.5
        outer_eta = grid = guidance = budget = deadline = None
    from_cli = run_from_args(Args, RUN_DEFAULTS)
    from_python = resolve_run(defaults=RUN_DEFAULTS, schedule="progressive", nfe=60, inner_solver="ddim",
                              inner_eta=0.5)
    authors = resolve_run(defaults=RUN_DEFAULTS, schedule="progressive", total_nfe=60, inner_scheduler="DDIM",
                          inner_eta=0.5)
    assert from_cli == from_python == authors
    assert from_cli.inner_steps == (20, 20, 20) and from_cli.outer_times == (999, 899, 799)
    assert NestedSampler.from_run(make_denoiser(load_unet()), from_cli).inner_steps == [20, 20, 20]


def test_family_defaults_decide_what_is_left_out():
    bundled = resolve_run(defaults=get_family("bundled").run_defaults())
    assert (bundled.schedule, bundled.inner_steps, bundled.solver_name, bundled.guidance) == \
        ("ramp", (10, 20, 70), "ddpm", 1.25)
    pytest.importorskip("diffusers")
    for name in family_names():
        d = get_family(name).run_defaults()
        run = resolve_run(defaults=d)
        assert run.kind == d.kind and run.solver_name == d.inner_solver and run.grid == d.grid
    flux = resolve_run(defaults=get_family("flux").run_defaults(), schedule="progressive", nfe=48)
    assert flux.outer_times == pytest.approx((1.0, 0.9, 0.8)) and flux.outer_eta == "fresh"


@pytest.mark.parametrize("options, names, match", [
    (dict(outer_steps=4, num_inference_steps=5), None, "outer_steps=4 and num_inference_steps=5"),
    (dict(schedule="progressive", outer_steps=3), {"outer_steps": "--outer", "schedule": "--schedule"},
     "--outer: 3 sets a uniform split; --schedule progressive takes nfe"),
    (dict(nfe=99), {"nfe": "--nfe"}, "--nfe: 99 NFE leave nothing"),   # progressive default of the family
    (dict(inner_solver="heun"), {"inner_solver": "--solver"}, "--solver: unknown solver 'heun'; valid: ddim"),
    (dict(inner_solver="ddpm", inner_eta=0.3), None, "inner_eta: only the DDIM solver takes η"),
    (dict(max_nfe=0), {"max_nfe": "--budget"}, "--budget: must be an integer ≥ 1"),
    (dict(deadline=-1), None, "deadline: must be a positive number of seconds"),
    (dict(t_start=1000), None, r"t_start: must be an integer in \[1, 999\]"),
    (dict(outer_times=[999, 500]), None, "outer_times: 2 times for 5 outer steps"),
    (dict(grid="sigma_min"), None, "grid: unknown convention 'sigma_min'"),
    (dict(colour="red"), None, "unknown option"),
])
def test_bad_run_options_name_the_option(options, names, match):
    defaults = RUN_DEFAULTS if "nfe" in options else RunDefaults()
    if options.get("nfe") == 99:
        defaults = RunDefaults(schedule="progressive", nfe=100, inner_solver="ddpm")
        options = dict(nfe=40)
        match = "--nfe: 40 NFE leave nothing"
    with pytest.raises((ValueError, TypeError), match=match):
        resolve_run(defaults=defaults, names=names, **options)


def test_a_run_is_a_frozen_value():
    run = resolve_run()
    with pytest.raises(Exception):
        run.inner_steps = (1,)
    assert run.vanilla().inner_steps == (100,) and run.vanilla().outer_steps == 1
    assert run.describe() == "5 outer × 20 inner"
