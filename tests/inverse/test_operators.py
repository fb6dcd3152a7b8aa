"""SVD operators: the factorisation U Σ Vᵀ must equal a direct implementation of each degradation (dense matrices
built by applying both to basis vectors), U and V must be orthonormal, and the guarded pseudo-inverse exact."""
import math

import pytest
import torch
import torch.nn.functional as F

from nested_diffusion.inverse import (Colorization, Deblurring, Denoising, Inpainting, SuperResolution,
                                      gaussian_kernel, make_operator, measure, uniform_kernel)

D64 = dict(dtype=torch.float64)


def direct_deblur(kr, kc):
    def f(x):  # x (B, C, H, W): 2-D cross-correlation with outer(kr, kc), zero padding, per channel
        B, C, H, W = x.shape
        k = torch.outer(kr, kc)[None, None].to(x)
        return F.conv2d(x.reshape(B * C, 1, H, W), k, padding=(kr.numel() // 2, kc.numel() // 2)).reshape(B, -1)
    return f


def cases():
    keep = torch.rand(5, 6, generator=torch.Generator().manual_seed(3)) > 0.4
    kr, kc = gaussian_kernel(3, 0.8), uniform_kernel(5)
    return [
        ("denoise", Denoising((2, 3, 4)), lambda x: x.reshape(x.shape[0], -1)),
        ("inpaint_mask", Inpainting((2, 5, 6), keep), lambda x: x[:, keep.expand(2, 5, 6)].reshape(x.shape[0], -1)),
        ("inpaint_random", Inpainting.random((3, 4, 4), 0.5, seed=7), None),
        ("inpaint_box", Inpainting.box((1, 6, 5), 1, 2, 3, 2),   # rows 1–3, columns 2–3 missing
         lambda x: torch.cat([x[:, 0, :1].flatten(1), x[:, 0, 1:4][:, :, [0, 1, 4]].flatten(1),
                              x[:, 0, 4:].flatten(1)], 1)),
        ("sr2", SuperResolution((2, 4, 6), 2), lambda x: F.avg_pool2d(x, 2).reshape(x.shape[0], -1)),
        ("sr3", SuperResolution((1, 6, 3), 3), lambda x: F.avg_pool2d(x, 3).reshape(x.shape[0], -1)),
        ("color", Colorization((3, 3, 4)), lambda x: x.mean(1).reshape(x.shape[0], -1)),
        ("deblur", Deblurring((2, 6, 7), kr, kc, zero_below=0.0), direct_deblur(kr, kc)),
    ]


CASES = cases()
IDS = [c[0] for c in CASES]


def dense(fn, size):
    return fn(torch.eye(size, **D64)).T  # column j = fn(e_j)


@pytest.mark.parametrize("name,op,direct", CASES, ids=IDS)
def test_svd_reconstructs_the_direct_operator(name, op, direct):
    n, m = op.n, op.m
    x_basis = torch.eye(n, **D64).reshape(n, *op.shape)
    Vd, Ud = dense(op.V, n), dense(op.U, m)
    s = op.singulars()
    assert s.shape == (m,) and bool((s >= 0).all())
    H_svd = Ud @ torch.diag(s) @ Vd[:, :m].T                       # (m, n)
    if direct is None:  # random inpainting: rows of the identity at the kept pixels, same pixels per channel
        keep = op.keep.reshape(-1)
        H_direct = torch.eye(n, **D64)[keep]
        assert bool((op.keep == op.keep[:1]).all())
    else:
        H_direct = direct(x_basis).T
    assert H_direct.shape == (m, n)
    torch.testing.assert_close(H_svd, H_direct, rtol=0, atol=1e-12)
    torch.testing.assert_close(dense(op.H, n), H_direct, rtol=0, atol=1e-12)
    torch.testing.assert_close(dense(op.Ht, m), H_direct.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,op,direct", CASES, ids=IDS)
def test_factors_are_orthonormal_and_inverse_to_their_transposes(name, op, direct):
    n, m = op.n, op.m
    Vd, Ud = dense(op.V, n), dense(op.U, m)
    torch.testing.assert_close(Vd.T @ Vd, torch.eye(n, **D64), rtol=0, atol=1e-12)
    torch.testing.assert_close(Vd @ Vd.T, torch.eye(n, **D64), rtol=0, atol=1e-12)
    torch.testing.assert_close(Ud.T @ Ud, torch.eye(m, **D64), rtol=0, atol=1e-12)
    torch.testing.assert_close(dense(op.Vt, n), Vd.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(dense(op.Ut, m), Ud.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,op,direct", CASES, ids=IDS)
def test_pseudo_inverse_is_exact_where_singular_values_are_nonzero(name, op, direct):
    H = dense(op.H, op.n)
    torch.testing.assert_close(dense(op.H_pinv, op.m), torch.linalg.pinv(H), rtol=0, atol=1e-9)
    g = torch.Generator().manual_seed(0)
    y = op.H(torch.randn(3, op.n, generator=g, **D64))             # y in the range of H: H H⁺ y = y
    torch.testing.assert_close(op.H(op.H_pinv(y)), y, rtol=0, atol=1e-10)
    if bool((op.singulars() > 0).all()):                           # full row rank: H H⁺ = I for any y
        y = torch.randn(3, op.m, generator=g, **D64)
        torch.testing.assert_close(op.H(op.H_pinv(y)), y, rtol=0, atol=1e-10)
    else:
        assert name == "deblur"   # the only case here with zero singular values (uniform 5-tap on 7 columns)


def test_singular_values_of_the_familiar_operators():
    torch.testing.assert_close(Colorization((3, 2, 2)).singulars(), torch.full((4,), 1 / math.sqrt(3), **D64))
    assert abs(float(Colorization((3, 2, 2)).singulars()[0]) - 0.57735) < 1e-5
    torch.testing.assert_close(SuperResolution((1, 8, 8), 4).singulars(), torch.full((4,), 0.25, **D64))
    assert Inpainting.random((1, 10, 10), 0.5, 0).m == 50 and Denoising((3, 2, 2)).m == 12


def test_deblurring_threshold_zeroes_small_singular_values_and_stays_close_to_the_blur():
    k = uniform_kernel(5)
    exact = Deblurring((1, 12, 12), k, zero_below=0.0)
    thr = Deblurring((1, 12, 12), k)  # DDRM's 3e-2
    s = thr.singulars()
    assert int((s == 0).sum()) > 0 and float(s[s > 0].min()) >= 3e-2
    H_exact, H_thr = dense(exact.H, 144), dense(thr.H, 144)
    H_direct = direct_deblur(k, k)(torch.eye(144, **D64).reshape(144, 1, 12, 12)).T
    torch.testing.assert_close(H_exact, H_direct, rtol=0, atol=1e-12)
    assert float(torch.linalg.matrix_norm(H_exact - H_thr, ord=2)) < 3e-2
    y = thr.H(torch.randn(2, 144, **D64))
    xp = thr.H_pinv(y)
    assert bool(torch.isfinite(xp).all())           # guarded: no inf/NaN from the zero singular values
    torch.testing.assert_close(thr.H(xp), y, rtol=0, atol=1e-10)   # y in the range: reproduced exactly
    torch.testing.assert_close(dense(thr.H_pinv, 144), torch.linalg.pinv(H_thr, atol=1e-9), rtol=0, atol=1e-8)


def test_float32_batches_and_image_shaped_inputs():
    op = SuperResolution((3, 8, 8), 4)
    x = torch.randn(5, 3, 8, 8)
    y = op.H(x)
    assert y.dtype == torch.float32 and y.shape == (5, 12)
    torch.testing.assert_close(y, F.avg_pool2d(x, 4).reshape(5, -1), rtol=1e-6, atol=1e-6)
    assert op.degraded_view(y).shape == (5, 3, 8, 8)
    torch.testing.assert_close(op.degraded_view(y), F.interpolate(F.avg_pool2d(x, 4), scale_factor=4),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(op.H(y.reshape(5, 3, 2, 2).repeat_interleave(4, 2).repeat_interleave(4, 3)), y,
                               rtol=1e-5, atol=1e-6)


def test_random_mask_is_seeded_and_applies_to_all_channels():
    a, b, c = (Inpainting.random((3, 6, 6), 0.5, s) for s in (1, 1, 2))
    assert torch.equal(a.keep, b.keep) and not torch.equal(a.keep, c.keep)
    assert int((~a.keep[0]).sum()) == 18 and bool((a.keep == a.keep[0]).all())
    full = Inpainting.random((1, 4, 4), 1.0)   # everything missing: m = 0 still works
    assert full.m == 0 and full.H(torch.ones(2, 1, 4, 4)).shape == (2, 0)
    assert torch.equal(full.H_pinv(torch.ones(2, 0)), torch.zeros(2, 16))


@pytest.mark.parametrize("call,match", [
    (lambda: Colorization((1, 4, 4)), "colorization needs a colour image"),
    (lambda: make_operator("colorize", (1, 28, 28)), "got 1 channel"),
    (lambda: SuperResolution((1, 28, 28), 3), "factor: 3 must divide the image size 28×28"),
    (lambda: SuperResolution((1, 8, 8), 0), "factor: must be an integer ≥ 1"),
    (lambda: Deblurring((1, 8, 8), [0.25, 0.25, 0.25, 0.25]), "odd number"),
    (lambda: uniform_kernel(4), "odd integer"),
    (lambda: gaussian_kernel(5, 0.0), "sigma"),
    (lambda: Inpainting.random((1, 4, 4), 1.5), "missing_ratio"),
    (lambda: Inpainting.box((1, 8, 8), 6, 0, 4, 2), "does not fit in an 8×8 image"),
    (lambda: Inpainting((2, 4, 4), torch.ones(3, 3, dtype=torch.bool)), "keep: expected a mask of shape"),
    (lambda: Denoising((1, 4)), "shape: expected"),
    (lambda: SuperResolution((1, 8, 8), 2).H(torch.zeros(2, 1, 8, 4)), r"x: super-resolution .* got \(2, 1, 8, 4\)"),
    (lambda: SuperResolution((1, 8, 8), 2).H_pinv(torch.zeros(2, 15)), r"y: .*expects \(B, 16\)"),
    (lambda: measure(Denoising((1, 2, 2)), torch.zeros(1, 1, 2, 2), -0.1), "sigma_y: .* ≥ 0"),
    (lambda: make_operator("blur", (1, 4, 4)), "degradation: unknown name 'blur'"),
])
def test_bad_input_is_rejected_with_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_measure_adds_seeded_noise_of_the_given_std():
    op = Denoising((1, 32, 32))
    x = torch.zeros(4, 1, 32, 32)
    y1, y2 = measure(op, x, 0.5, seed=3), measure(op, x, 0.5, seed=3)
    assert torch.equal(y1, y2)
    assert abs(float(y1.std()) - 0.5) < 0.02         # 4096 draws: std error ≈ 0.006
    assert torch.equal(measure(op, x, 0.0), op.H(x))
