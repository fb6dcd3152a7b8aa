"""HiDream-I1 as a generic family: its stock ``HiDreamImagePipeline`` through ``NestedScheduler`` with a
FlowMatchEulerDiscreteScheduler (tiny random weights, ``fixtures_any.tiny_hidream``, conditioned by embeddings).
One outer step of n inner steps is the stock call of n steps: the same latents bit for bit (tolerance 0). Its UniPC
default is refused: the stock call branches on ``isinstance(self.scheduler, UniPCMultistepScheduler)``, which the
wrapper would not take, so the run would not be the stock one."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from fixtures_any import embeds, tiny_hidream  # noqa: E402

from nested_diffusion import anytime  # noqa: E402
from nested_diffusion.families import SURFACES, get_family  # noqa: E402
from nested_diffusion.pipelines.nested_scheduler import NestedSchedulerError  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipe():
    return tiny_hidream()


def test_one_outer_step_is_the_stock_call_bit_for_bit(pipe):
    kw = dict(embeds("hidream"), height=16, width=16)
    stock = pipe(**kw, num_inference_steps=4, output_type="latent", generator=torch.Generator().manual_seed(0)).images
    ups = list(anytime(pipe, **kw, outer_steps=1, inner_steps=4, decode=False,
                       generator=torch.Generator().manual_seed(0)))
    assert [u.nfe for u in ups] == [1, 2, 3, 4] and ups[-1].final
    assert torch.equal(ups[-1].x0, stock)
    nested = list(anytime(pipe, **kw, outer_steps=2, inner_steps=2, previews="none",
                          generator=torch.Generator().manual_seed(0)))
    assert [u.nfe for u in nested] == [2, 4] and nested[-1].x0.shape == (1, 3, 16, 16)
    assert torch.isfinite(nested[-1].x0).all() and not torch.equal(nested[-1].x0, ups[-1].x0)


def test_the_table_entry_reads_its_defaults_and_reaches_every_surface():
    fam = get_family("hidream")
    d = fam.run_defaults()
    assert (fam.generic, d.kind, d.outer_steps, d.inner_steps, d.nfe, d.grid) == (True, "flow", 5, 10, 50,
                                                                                   "sigma_min")
    assert fam.surfaces == SURFACES and fam.guidance_default() == 5.0


def test_its_unipc_default_is_refused_before_any_model_call():
    from diffusers import UniPCMultistepScheduler
    unipc = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = tiny_hidream(scheduler=unipc)
    calls = []
    pipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(NestedSchedulerError, match=r"scheduler: HiDreamImagePipeline branches on"):
        list(anytime(pipe, **embeds("hidream"), height=16, width=16, outer_steps=2, inner_steps=2,
                     generator=torch.Generator().manual_seed(0)))
    assert calls == []
