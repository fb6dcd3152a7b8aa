"""The library core: schedules, step maths, solvers, the nested sampler and its anytime stream, denoiser
adapters, per-sample noise and the exact Gaussian-mixture denoiser. It imports nothing else of ours."""
