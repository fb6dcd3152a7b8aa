"""Inverse problems with nested diffusion: SVD degradation operators and DDRM as the inner process (the seed's
Algorithm 3). See ``ddrm.py`` for units (σ_y in [−1, 1] pixel units), the grid and the initialisation rule."""
from .operators import (MEASUREMENT_SEED_OFFSET, Colorization, Denoising, Inpainting, SuperResolution, SVDOperator,
                        check_sigma_y, householder_basis, measure)
from .blur import Deblurring, gaussian_kernel, toeplitz_matrix, uniform_kernel
from .registry import DEGRADATIONS, make_operator
from .ddrm import (DEFAULT_ETA, DEFAULT_ETA_B, DDRMSolver, Measurement, ddrm_grid, ddrm_init, ddrm_restore,
                   ddrm_sampler, ddrm_update, reference_t_start)
from .metrics import consistency, consistency_rms, psnr

__all__ = ["MEASUREMENT_SEED_OFFSET", "Colorization", "Denoising", "Inpainting", "SuperResolution", "SVDOperator",
           "check_sigma_y", "householder_basis", "measure", "Deblurring", "gaussian_kernel", "toeplitz_matrix",
           "uniform_kernel", "DEGRADATIONS", "make_operator", "DEFAULT_ETA", "DEFAULT_ETA_B", "DDRMSolver",
           "Measurement", "ddrm_grid", "ddrm_init", "ddrm_restore", "ddrm_sampler", "ddrm_update",
           "reference_t_start", "consistency", "consistency_rms", "psnr"]
