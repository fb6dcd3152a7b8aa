"""Issue 10: inference by default, one solver registry, clear errors for damaged weights, readable logs, and the
layering the architecture promises (core imports nothing else of ours; arrows point downward)."""
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nested_diffusion
from nested_diffusion import (DDIMSolver, DenoiserOutput, GaussianMixtureDenoiser, NestedSampler,
                              NoiseSource, SolverSpec, cli, get_schedule, register_solver, solver_names,
                              unregister_solver)
from nested_diffusion.bundled import TinyUNet, bundled_model_path, load_unet, make_denoiser

SRC = Path(nested_diffusion.__file__).resolve().parent


class GradProbe:
    """A denoiser with a trainable parameter that records the grad mode of every call."""

    def __init__(self):
        self.schedule = get_schedule("cosine")
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.modes = []

    def __call__(self, x, t, cond=None):
        self.modes.append(torch.is_grad_enabled())
        return DenoiserOutput(x * self.w, None)


# ------------------------------------------------------------------------------------------ 1. inference by default
def test_stream_records_no_autograd_unless_asked():
    den = GradProbe()
    ups = list(NestedSampler(den, 2, 3).stream([0, 1], (2, 1, 4, 4)))
    assert den.modes and not any(den.modes)
    assert all(u.x0.grad_fn is None and not u.x0.requires_grad for u in ups)
    den.modes.clear()
    last = NestedSampler(den, 2, 3).sample([0, 1], (2, 1, 4, 4), grad=True)
    assert all(den.modes) and last.x0.requires_grad
    last.x0.sum().backward()                          # opt-in gradients reach the model's parameters
    assert den.w.grad is not None


def test_grad_mode_of_the_caller_is_untouched_between_updates():
    seen = []
    for _ in NestedSampler(GradProbe(), 2, 2).stream([0], (1, 1, 4, 4)):
        seen.append(torch.is_grad_enabled())
    assert seen and all(seen)                          # the consumer's code keeps its (default) grad mode


def test_a_solver_run_directly_is_grad_free_and_nested_runs_inherit():
    den = GradProbe()
    events = list(DDIMSolver().run(den, torch.randn(1, 1, 4, 4), 999, 3, NoiseSource([0])))
    assert len(events) == 3 and not any(den.modes) and events[-1].x0.grad_fn is None
    den.modes.clear()
    list(DDIMSolver().run(den, torch.randn(1, 1, 4, 4), 999, 3, NoiseSource([0]), grad=True))
    assert all(den.modes)


def test_bundled_model_in_the_stream_keeps_no_graph():
    model = load_unet()
    assert any(p.requires_grad for p in model.parameters())
    u = NestedSampler(make_denoiser(model), 2, 2, "ddpm").sample([0, 1], (2, 1, 28, 28), cond=torch.tensor([0, 1]))
    assert u.x0.grad_fn is None and not u.x0.requires_grad


def test_ddrm_restore_is_grad_free():
    from nested_diffusion.inverse import Denoising, ddrm_restore
    den = GradProbe()
    op = Denoising((1, 4, 4))
    x = ddrm_restore(den, op, torch.zeros(1, 16), 0.1, steps=3, seeds=[0])
    assert not any(den.modes) and x.grad_fn is None


def test_generate_command_runs_the_model_without_autograd(tmp_path, capsys, monkeypatch):
    modes = []
    real = TinyUNet.forward

    def forward(self, *a, **k):
        modes.append(torch.is_grad_enabled())
        return real(self, *a, **k)
    monkeypatch.setattr(TinyUNet, "forward", forward)
    assert cli.main(["generate", "--out", str(tmp_path), "--classes", "1", "--outer", "2", "--inner", "2",
                     "--quiet", "--threads", "1"]) == 0
    assert modes and not any(modes)


def test_evaluation_snapshots_run_without_autograd(tmp_path):
    from nested_diffusion.evaluation.snapshots import SamplerFactory, collect_snapshots
    den = GradProbe()
    factory = SamplerFactory(lambda o, i: NestedSampler(den, o, i), (1, 4, 4), info={"probe": 1})
    collect_snapshots(factory, 2, 2, 3, 0, [2, 4], tmp_path, chunk=2)
    assert den.modes and not any(den.modes)


# ------------------------------------------------------------------------------------------ 3. one solver registry
class HalfwaySolver(DDIMSolver):
    """A toy inner solver: DDIM that reports itself under its own name."""

    name = "halfway"


@pytest.fixture
def toy_solver():
    register_solver(SolverSpec("halfway", HalfwaySolver, aliases=("half-way",), takes_eta=True,
                               inner_eta_default=0.3, description="toy DDIM for the registry test"))
    try:
        yield
    finally:
        unregister_solver("halfway")
    assert "halfway" not in solver_names()


def test_a_registered_solver_reaches_the_sampler_the_cli_and_a_pipeline(toy_solver, tmp_path, capsys):
    assert "halfway" in solver_names()
    s = NestedSampler(GaussianMixtureDenoiser([[0.0]], [1.0]), 2, 3, "Half-Way", 0.2)
    assert isinstance(s.solver.inner, HalfwaySolver) and s.solver.inner.eta == 0.2
    code = cli.main(["generate", "--out", str(tmp_path), "--classes", "1", "--outer", "2", "--inner", "2",
                     "--solver", "halfway", "--quiet", "--threads", "1"])
    assert code == 0
    doc = json.loads((tmp_path / "updates.json").read_text())
    assert doc["settings"]["solver"] == "halfway" and doc["settings"]["inner_eta"] == 0.3   # registry's inner η
    from nested_diffusion.cli import build_parser
    helptext = build_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    assert "halfway" in helptext
    from nested_diffusion.core.run import RunDefaults
    from nested_diffusion.pipelines.adapters import pipeline_run
    solver = pipeline_run(dict(inner_solver="halfway"), RunDefaults()).build_inner()
    assert isinstance(solver, HalfwaySolver) and solver.eta == 0.3


def test_a_registered_solver_runs_inside_the_sd_pipeline(toy_solver):
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(Path(__file__).parent))
    from fixtures_tiny import tiny_sd
    from nested_diffusion.pipelines import NestedStableDiffusionPipeline
    pipe = NestedStableDiffusionPipeline.from_pipe(tiny_sd())
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="a cat", height=16, width=16, output_type="latent", outer_steps=2, inner_steps=2,
              generator=torch.Generator().manual_seed(0))
    toy = pipe(inner_solver="halfway", **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    ddim = pipe(inner_solver="ddim", inner_eta=0.3, **kw)      # the toy is DDIM with its registry η
    assert torch.equal(toy.images, ddim.images) and toy.nfe == 4


def test_unknown_and_duplicate_registrations_are_clear():
    with pytest.raises(ValueError, match="solver: unknown solver 'nope'; valid: ddim, ddpm"):
        NestedSampler(GradProbe(), 2, 2, "nope")
    with pytest.raises(ValueError, match=r"\['ddim'\] already name a registered solver"):
        register_solver(SolverSpec("ddim", DDIMSolver))


# ------------------------------------------------------------------------------------------ 6. bad input on the tour
def test_truncated_weights_give_one_clear_error(tmp_path, capsys):
    folder = tmp_path / "unet"
    shutil.copytree(bundled_model_path(), folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4000])
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model.safetensors: not a readable safetensors file"):
        TinyUNet.from_pretrained(folder)
    code = cli.main(["generate", "--model", str(folder), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and str(weights) in err and "Traceback" not in err


def test_garbage_config_and_mismatched_weights_are_clear(tmp_path):
    folder = tmp_path / "unet"
    shutil.copytree(bundled_model_path(), folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json: not valid JSON"):
        TinyUNet.from_pretrained(folder)
    TinyUNet(channels=(8, 16)).save_pretrained(tmp_path / "small")
    shutil.copy(tmp_path / "small" / "config.json", folder / "config.json")
    with pytest.raises(ValueError, match=r"the weights do not fit the TinyUNet of config.json"):
        TinyUNet.from_pretrained(folder)


def test_progress_in_a_log_file_is_plain_lines(tmp_path):
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "nested_diffusion.cli", "generate", "--out", str(tmp_path / "o"),
                        "--classes", "2", "--outer", "2", "--inner", "2", "--threads", "1"],
                       stdout=f, stderr=subprocess.STDOUT, check=True, timeout=120)
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text                 # no progress-bar frames
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("nfe")]
    assert [int(ln.split()[1].split("/")[0]) for ln in lines] == [1, 2, 4]


# ------------------------------------------------------------------------------------------ 2. the layers
LAYERS = {"core": set(), "io": set(), "imaging": {"io"}, "inverse": {"core", "io"},
          "evaluation": {"core", "io", "imaging"}, "pipelines": {"core", "io", "evaluation"},
          "bundled": {"core", "io", "imaging", "evaluation", "inverse"},
          "families": {"core", "io", "imaging", "evaluation", "inverse", "pipelines", "bundled"},
          # interface layer: the OpenAI-compatible API drives the web backends' one path
          "api": {"core", "io", "imaging", "evaluation", "inverse", "pipelines", "bundled", "families", "web"}}


def _imports_of(path: Path) -> set[str]:
    """Top-level subpackages of ours that a module imports (relative imports resolved)."""
    rel = path.relative_to(SRC).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(rel[:-1])[:len(rel) - node.level]
            target = base + (node.module.split(".") if node.module else [])
            if target:
                found.add(target[0])
            elif node.module is None:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nested_diffusion."):
            found.add(node.module.split(".")[1])
    return found


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_imports_point_downward(layer):
    files = [SRC / f"{layer}.py"] if (SRC / f"{layer}.py").exists() else sorted((SRC / layer).rglob("*.py"))
    assert files
    for f in files:
        bad = _imports_of(f) - LAYERS[layer] - {layer, "__version__"}
        assert not bad, f"{f.relative_to(SRC)} imports {sorted(bad)}; {layer} may import only {sorted(LAYERS[layer])}"


def test_no_private_names_imported_across_modules():
    offenders = []
    for f in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                offenders += [f"{f.relative_to(SRC)}: {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders
