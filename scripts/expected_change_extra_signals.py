"""Would two more run-time signals fix the semantic-distance predictor? An offline check on calibration chunks.

Candidates (not in core.expected_change.SIGNALS): ``label_nll`` = −log p(requested class | x̂) from the
classifier, and ``proto`` = 1 − cos between x̂'s features and the mean final feature of its class (fitted on the
training half). Fits the per-update semantic model (core.change_fit.fit_log_linear) on a random 2/3 of the chunks'
samples with and without them and prints the MAE reduction vs the population curve on the other third, pooled over
the updates from the first finished inner run to the last before the final.

    python scripts/expected_change_extra_signals.py runs/calibrate/<hash> --inner 20,20,60 --first 20
"""
import argparse
import glob

import torch

import nested_diffusion.core.change_fit as CF
import nested_diffusion.core.expected_change as EC
from nested_diffusion.bundled.features import load_feature_classifier
from nested_diffusion.evaluation.expected_change import chunk_targets, classifier_signals, load_chunks, replay_signals

ap = argparse.ArgumentParser()
ap.add_argument("cache")
ap.add_argument("--inner", default="20,20,60", help="inner steps per outer step of the calibration")
ap.add_argument("--first", type=int, default=20, help="NFE of the first finished inner result")
ap.add_argument("--seeds-prefix", default="chunk-10", help="chunk files to use (default: the calibration seeds)")
a = ap.parse_args()
torch.set_num_threads(1)
chunk = load_chunks(sorted(glob.glob(f"{a.cache}/{a.seeds_prefix}*.npz")))
fn = classifier_signals(load_feature_classifier().classifier)
S = replay_signals(chunk, [int(s) for s in a.inner.split(",")], fn)
T = chunk_targets(chunk, lambda x: fn(x)[0], lambda x: fn(x)[1])
u = torch.as_tensor(chunk["updates"])
N, U = u.shape[:2]
labels = torch.as_tensor(chunk["labels"])
with torch.no_grad():
    f, logits = fn(u.reshape(N * U, *u.shape[2:]))
p, f = logits.softmax(-1).reshape(N, U, -1), f.reshape(N, U, -1)
idx = torch.randperm(N, generator=torch.Generator().manual_seed(0))
tr, te = idx[:2 * N // 3], idx[2 * N // 3:]
proto = torch.stack([f[tr][labels[tr] == c, -1].mean(0) for c in range(10)])
extra = {"label_nll": -torch.log(p[torch.arange(N)[:, None], torch.arange(U)[None], labels[:, None].expand(N, U)]
                                 .clamp_min(1e-6)),
         "proto": (1 - torch.nn.functional.cosine_similarity(f, proto[labels][:, None].expand_as(f), dim=-1))
         .clamp_min(0)}
S2 = torch.cat([S] + [v[..., None].float() for v in extra.values()], -1)
base = list(EC.SIGNALS)
EC.SIGNALS = CF.SIGNALS = tuple(base + list(extra))            # experiment only: widen the signal table
EC.LOG_SIGNALS = CF.LOG_SIGNALS = EC.LOG_SIGNALS | set(extra)
nfe = [int(n) for n in chunk["nfe"]]
sel = range(nfe.index(a.first), U - 1)


def reduction(feats):
    mae, pop = [], []
    for j in sel:
        y = T["semantic"][:, j]
        m = CF.fit_log_linear(y[tr], S2[tr, j], CF.usable_features(S2[tr, j], feats), CF.EPS["semantic"])
        pm = CF.fit_log_linear(y[tr], S2[tr, j], [], CF.EPS["semantic"])
        mae.append((EC.predict_log_linear(m, S2[te, j])[0] - y[te]).abs().mean())
        pop.append((EC.predict_log_linear(pm, S2[te, j])[0] - y[te]).abs().mean())
    return 1 - float(torch.stack(mae).mean() / torch.stack(pop).mean())


print(f"{N} samples ({len(tr)} fit / {len(te)} test), updates {[nfe[j] for j in sel]}; semantic MAE reduction vs "
      f"the population curve:")
for name, feats in (("shipped signals", base), ("+ label_nll", base + ["label_nll"]), ("+ proto", base + ["proto"]),
                    ("+ both", base + list(extra))):
    print(f"  {name:16s} {100 * reduction(feats):5.1f}%")
