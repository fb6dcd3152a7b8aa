"""Print the markdown tables of docs/RESULTS.md from the experiment JSON files (so every number there can be
traced to a file).  python docs/make_tables.py [rnd_sweep.json] [budget_table.json] [table2.json]"""
import json
import sys

PAPER_T1 = {"1x200": (803.33, 2.2060), "2x100": (484.49, 2.1919), "4x50": (354.00, 2.2677),
            "5x40": (346.15, 2.3534), "10x20": (388.18, 2.6267), "20x10": (521.30, 3.2717)}
PAPER_T3 = {100: [(282.89, 13.03), (202.34, 9.20), (65.22, 5.97), (8.10, 4.00), (2.44, 3.18)],
            150: [(282.05, 6.57), (199.74, 4.99), (62.37, 3.58), (7.67, 2.82), (2.24, 2.50)],
            200: [(282.83, 4.58), (197.93, 3.70), (61.82, 2.96), (7.65, 2.54), (2.20, 2.35)],
            250: [(284.13, 3.57), (197.74, 3.08), (60.19, 2.61), (7.57, 2.36), (2.16, 2.28)]}
PAPER_T2 = {"denoise": [25.76, 25.80, 25.81, 25.83], "sr4": [23.19, 23.55, 23.89, 23.78],
            "inpaint50": [31.20, 33.16, 35.07, 35.08], "deblur": None}


def rnd(path):
    d = json.load(open(path))
    v = d["configs"][0]
    print(f"{d['samples']} samples, seeds {d['seed']}..{d['seed'] + d['samples'] - 1}; noise floor "
          f"{d['noise_floor']['mean']:.4f} (n={d['noise_floor']['n']})\n")
    print("| outer × inner | AUC ± boot. std | AUC − vanilla (paired) | final FD ± boot. std | final vs vanilla "
          "(paired) | final KID ×10³ | precision / recall | paper AUC | paper final FID |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in d["configs"]:
        diff = r.get("auc_minus_first")
        fdiff = r.get("final_fd_minus_first")
        pa, pf = PAPER_T1.get(r["label"], ("", ""))
        dtxt = "—" if diff is None else f"{diff['point']:.1f} ± {diff['std']:.1f}"
        rel = "" if fdiff is None else f"{fdiff['point']:+.3f} ± {fdiff['std']:.3f} ({100 * fdiff['point'] / v['final_fd']:+.1f}%)"
        paper_rel = f"{pf:.4f} ({100 * (pf / PAPER_T1['1x200'][1] - 1):+.1f}%)" if pf else ""
        print(f"| {r['label']} | {r['auc']:.1f} ± {r['auc_boot']['std']:.1f} | "
              f"{dtxt} | "
              f"{r['final_fd']:.3f} ± {r['final_fd_boot']['std']:.3f} | {rel or '—'} | "
              f"{1e3 * r['final_kid']['mean']:.1f} ± {1e3 * r['final_kid']['std']:.1f} | "
              f"{r['final_precision_recall']['precision']:.3f} / {r['final_precision_recall']['recall']:.3f} | "
              f"{pa} | {paper_rel} |")
    print("\nFD of the anytime result at 10, 20, 30, 40, 50, 100, 150, 200 NFE:\n")
    print("| outer × inner | 10 | 20 | 30 | 40 | 50 | 100 | 150 | 200 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in d["configs"]:
        cells = [r["fd"][d["marks"].index(m)] for m in (10, 20, 30, 40, 50, 100, 150, 200)]
        print(f"| {r['label']} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    t = d["timing_total"]
    print(f"\ntiming: {t}")


def budget(path):
    d = json.load(open(path))
    print(f"{d['samples']} samples; noise floor {d['noise_floor']['mean']:.4f} (n={d['noise_floor']['n']})\n")
    print("| budget | % | NFE | vanilla x̂0 FD | nested FD | nested − vanilla (paired) | paper Van | paper ND |")
    print("|---|---|---|---|---|---|---|---|")
    for r in d["rows"]:
        k = d["fractions"].index(r["fraction"])
        pv, pn = PAPER_T3[r["budget"]][k]
        dd = r["nested_minus_vanilla"]
        print(f"| {r['budget']} | {100 * r['fraction']:.0f}% | {r['nfe']} | {r['vanilla_fd']:.3f} ± "
              f"{r['vanilla_fd_boot_std']:.3f} | {r['nested_fd']:.3f} ± {r['nested_fd_boot_std']:.3f} | "
              f"{dd['point']:+.3f} ± {dd['std']:.3f} | {pv} | {pn} |")
    print(f"\ntiming: {d['timing_total']}, wall {d['wall_time_s']:.0f} s")


def table2(path):
    d = json.load(open(path))
    cols = d["columns"]
    print(f"{d['settings']['n_images']} test images, seed {d['settings']['seed']}\n")
    print("| task | σ_y | " + " | ".join(cols) + " | paper (10/20/30 NFE, DDRM) |")
    print("|---|---|" + "---|" * (len(cols) + 1))
    for name, r in d["tasks"].items():
        cells = []
        for c in cols:
            s = f"{r['psnr'][c]:.2f} ± {r['psnr_sem'][c]:.2f}"
            if c in r.get("psnr_minus_vanilla", {}):
                pd = r["psnr_minus_vanilla"][c]
                s += f" ({pd['mean']:+.2f} ± {pd['sem']:.2f})"
            cells.append(s)
        paper = PAPER_T2.get(name)
        print(f"| {name} | {r['sigma_y']} | " + " | ".join(cells) + f" | {' / '.join(map(str, paper)) if paper else '—'} |")
    print("\nFD (classifier features, restorations vs the same clean images):\n")
    print("| task | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, r in d["tasks"].items():
        print(f"| {name} | " + " | ".join(f"{r['fd'][c]:.2f}" for c in cols) + " |")
    print(f"\nwall {d.get('wall_time_s')} s, threads {d.get('torch_threads')}")


for p in sys.argv[1:]:
    kind = json.load(open(p)).get("experiment", "table2")
    {"rnd_sweep": rnd, "budget_table": budget, "table2": table2}[kind](p)
    print()
