"""Privacy vs utility of three shared gradients (paper 003, Figure 6 analogue).

For every seed: one model is initialised (the round's global model), ``samples`` training images
are drawn, and for each batch of ``batch_size`` of them the client's shared gradient is computed in
three ways -- plain, DP (per-example clipping to ``C`` plus Gaussian noise ``sigma * C``), and the
gradient of pFedHT's transformed batch (:mod:`raysim.privacy.transform`). DLG and iDLG
(:mod:`raysim.privacy.attack`) invert each one; the reconstruction is scored against the original
images with PSNR / SSIM (:mod:`raysim.privacy.quality`) and the recovered labels against the true
ones. Utility: the same initial model is trained for a few epochs on the original training data
(plain SGD), with DP-SGD at the same ``sigma`` and ``C``, and on the transformed training data (the
training set transformed once at the initial model, batch by batch, then used as a fixed dataset
with its soft labels), and evaluated on the original test split.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raysim.privacy.attack import AttackConfig, dlg, idlg
from raysim.privacy.gradients import Grads, dp_gradient, gradient_of
from raysim.privacy.quality import image_quality, match_batch
from raysim.privacy.transform import TransformConfig, transform

SUPPORTED_DATASETS = ("digits", "fashion-mnist")
PSNR_CAP = 100.0  # dB; an exact reconstruction (PSNR = inf) counts as this in means and CIs
ATTACKS = ("DLG", "iDLG")
GRID_COLUMNS_MAX = 8


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "mlp"
    samples: int = 4  # images attacked per seed
    seeds: int = 3
    batch_size: int = 1  # images per shared gradient
    attack: AttackConfig = field(default_factory=AttackConfig)
    dp_sigma: float = 0.01  # noise multiplier
    dp_clip: float = 1.0
    h_rms: float = 0.25  # transform's h = h_rms * sqrt(pixels): an RMS pixel distance of at least 0.25
    transform: TransformConfig = field(default_factory=TransformConfig)
    train_epochs: int = 5
    train_lr: float = 0.3
    train_batch: int = 32
    train_subset: int = 2000  # training images used for the utility runs (all of digits' 1437)

    def __post_init__(self) -> None:
        if self.dataset not in SUPPORTED_DATASETS:
            raise ValueError(
                f"unknown dataset {self.dataset!r}; privacy-eval supports {', '.join(SUPPORTED_DATASETS)}"
            )
        if self.samples < 1 or self.seeds < 1 or self.batch_size < 1:
            raise ValueError(
                f"samples, seeds and batch-size must be >= 1, got samples={self.samples}, "
                f"seeds={self.seeds}, batch-size={self.batch_size}"
            )
        if self.train_epochs < 0 or self.train_subset < 1 or self.train_batch < 1:
            raise ValueError("train_epochs must be >= 0, train_subset and train_batch >= 1")


def quick_config(**over: Any) -> EvalConfig:
    """The ``--quick`` preset: digits, 2 samples, 1 seed, few iterations (well under a minute)."""
    base = EvalConfig(
        samples=2,
        seeds=1,
        attack=AttackConfig(iterations=50),
        transform=TransformConfig(steps=100),
        train_epochs=3,
        train_subset=640,
    )
    return replace(base, **over)


# -------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]


def _load(cfg: EvalConfig) -> _Data:
    from raysim.data import load_dataset

    ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=0)
    return _Data(
        x_train=torch.from_numpy(np.asarray(ds.x_train, dtype=np.float32) / 255.0),
        y_train=torch.from_numpy(np.array(ds.y_train)),
        x_test=torch.from_numpy(np.asarray(ds.x_test, dtype=np.float32) / 255.0),
        y_test=torch.from_numpy(np.array(ds.y_test)),
        num_classes=ds.num_classes,
        input_shape=tuple(ds.input_shape),
    )


def _model(cfg: EvalConfig, data: _Data, seed: int) -> nn.Module:
    from raysim.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg.model, data.input_shape, data.num_classes)


def _h(cfg: EvalConfig, data: _Data) -> float:
    return cfg.h_rms * math.sqrt(math.prod(data.input_shape))


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def _train(
    init: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    cfg: EvalConfig,
    seed: int,
    *,
    dp: bool = False,
) -> nn.Module:
    """Plain SGD (or DP-SGD with ``dp``) from a copy of ``init``; ``target`` hard or soft."""
    model = copy.deepcopy(init)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(seed + 1)
    n = len(x)
    for _ in range(cfg.train_epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.train_batch):
            idx = order[start : start + cfg.train_batch]
            if dp:
                grads = dp_gradient(
                    model, x[idx], target[idx], clip=cfg.dp_clip, sigma=cfg.dp_sigma, generator=noise
                )
            else:
                grads = gradient_of(model, x[idx], target[idx])
            with torch.no_grad():
                for p, g in zip(model.parameters(), grads, strict=True):
                    p.sub_(cfg.train_lr * g)
    return model


def _transform_dataset(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    tcfg: TransformConfig,
    cfg: EvalConfig,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    xs, ps, ok = [], [], 0
    batches = range(0, len(x), cfg.train_batch)
    for k, start in enumerate(batches):
        r = transform(
            model,
            x[start : start + cfg.train_batch],
            y[start : start + cfg.train_batch],
            num_classes,
            config=tcfg,
            seed=seed * 100_003 + k,
        )
        xs.append(r.x)
        ps.append(r.soft_labels)
        ok += int(r.satisfied)
    return torch.cat(xs), torch.cat(ps), ok / len(batches)


def _label_hits(true: torch.Tensor, found: torch.Tensor) -> float:
    """Fraction of the batch's labels recovered (multiset intersection / batch size)."""
    t = np.bincount(true.numpy(), minlength=1000)
    f = np.bincount(found.numpy(), minlength=1000)
    return float(np.minimum(t, f).sum() / len(true))


# -------------------------------------------------------------------------------------- the run


def run_eval(cfg: EvalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole evaluation; returns a JSON-able dict (see :func:`write_outputs`)."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = _load(cfg)
    h = _h(cfg, data)
    tcfg = replace(cfg.transform, h=h)
    defences = ("none", "dp", "transform")
    per_image: dict[str, dict[str, dict[str, list[float]]]] = {
        d: {a: {"psnr": [], "ssim": [], "label": []} for a in ATTACKS} for d in defences
    }
    accuracy: dict[str, list[float]] = {d: [] for d in defences}
    constraint: dict[str, list[float]] = {
        "satisfied": [],
        "grad_distance": [],
        "data_rms": [],
        "train_satisfied": [],
    }
    grid: dict[str, list[np.ndarray]] = {}
    shape = data.input_shape
    for seed in range(cfg.seeds):
        model = _model(cfg, data, seed)
        for p in model.parameters():
            p.requires_grad_(True)
        rng = np.random.default_rng(seed)
        picks = torch.from_numpy(rng.choice(len(data.x_train), size=cfg.samples, replace=False))
        for b0 in range(0, cfg.samples, cfg.batch_size):
            idx = picks[b0 : b0 + cfg.batch_size]
            x, y = data.x_train[idx], data.y_train[idx]
            tag = f"seed {seed} images {b0 + 1}-{b0 + len(idx)}/{cfg.samples}"
            t = time.perf_counter()
            tr = transform(model, x, y, data.num_classes, config=tcfg, seed=seed * 7919 + b0)
            constraint["satisfied"].append(float(tr.satisfied))
            constraint["grad_distance"].append(tr.grad_distance)
            constraint["data_rms"].extend((tr.data_distance / math.sqrt(math.prod(shape))).tolist())
            log(
                f"[{tag}] transform: {tr.stop_reason} after {tr.steps_run} steps, gradient distance "
                f"{tr.grad_distance:.3f} (eps {tcfg.epsilon}), min ||X'-X|| {float(tr.data_distance.min()):.2f} "
                f"(h {h:.2f}) ({time.perf_counter() - t:.1f}s)"
            )
            shared: dict[str, Grads] = {
                "none": gradient_of(model, x, y),
                "dp": dp_gradient(
                    model,
                    x,
                    y,
                    clip=cfg.dp_clip,
                    sigma=cfg.dp_sigma,
                    generator=torch.Generator().manual_seed(seed * 7919 + b0),
                ),
                "transform": tr.gradient,
            }
            if seed == 0:
                grid.setdefault("original", []).extend(x.numpy())
                grid.setdefault("transformed X'", []).extend(tr.x.numpy())
            for d in defences:
                for name, attack in (("DLG", dlg), ("iDLG", idlg)):
                    t = time.perf_counter()
                    res = attack(
                        model,
                        shared[d],
                        tuple(x.shape),
                        data.num_classes,
                        config=cfg.attack,
                        seed=seed * 7919 + b0,
                    )
                    rec = res.x.numpy()
                    perm = match_batch(x.numpy(), rec)
                    scores = [image_quality(x[k].numpy(), rec[perm[k]]) for k in range(len(idx))]
                    hits = _label_hits(y, res.labels)
                    cell = per_image[d][name]
                    cell["psnr"].extend(s[0] for s in scores)
                    cell["ssim"].extend(s[1] for s in scores)
                    cell["label"].append(hits)
                    if seed == 0:
                        grid.setdefault(f"{name}|{d}", []).extend(rec[perm])
                    log(
                        f"[{tag}] {name:<4} on {d:<9}: PSNR {np.mean([s[0] for s in scores]):6.2f} dB, "
                        f"SSIM {np.mean([s[1] for s in scores]):5.2f}, labels {hits:.0%} "
                        f"({time.perf_counter() - t:.1f}s)"
                    )
        # utility: train from this seed's initial model with each defence
        t = time.perf_counter()
        n = min(cfg.train_subset, len(data.x_train))
        sub = torch.from_numpy(np.sort(rng.choice(len(data.x_train), size=n, replace=False)))
        xt, yt = data.x_train[sub], data.y_train[sub]
        xtr, ptr, frac = _transform_dataset(model, xt, yt, data.num_classes, tcfg, cfg, seed)
        constraint["train_satisfied"].append(frac)
        trained = {
            "none": _train(model, xt, yt, cfg, seed),
            "dp": _train(model, xt, yt, cfg, seed, dp=True),
            "transform": _train(model, xtr, ptr, cfg, seed),
        }
        for d in defences:
            accuracy[d].append(_accuracy(trained[d], data.x_test, data.y_test))
        log(
            f"[seed {seed}] test accuracy: "
            + ", ".join(f"{d} {accuracy[d][-1]:.3f}" for d in defences)
            + f" (transform constraint met on {frac:.0%} of training batches) ({time.perf_counter() - t:.1f}s)"
        )
    return {
        "config": _jsonable(asdict(cfg)),
        "h": h,
        "per_image": per_image,
        "accuracy": accuracy,
        "constraint": constraint,
        "grid": {k: np.stack(v).tolist() for k, v in grid.items()},
        "seconds": time.perf_counter() - t0,
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# -------------------------------------------------------------------------------------- outputs


def _fmt(values: list[float], digits: int) -> str:
    from raysim.metrics import mean_ci95

    m, ci = mean_ci95(np.asarray(values, dtype=np.float64))
    return f"{m:.{digits}f} ± {ci:.{digits}f}"


def defence_label(d: str, cfg: dict[str, Any], h: float) -> str:
    if d == "none":
        return "none (plain gradient)"
    if d == "dp":
        return f"DP (clip C={cfg['dp_clip']}, σ={cfg['dp_sigma']})"
    t = cfg["transform"]
    kind = "relative" if t["relative"] else "absolute"
    return f"pFedHT transform (h={h:.2f}, ε={t['epsilon']} {kind})"


def table_markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    h = results["h"]
    lines = [
        f"# Gradient inversion vs defences — {cfg['dataset']}, model {cfg['model']}",
        "",
        f"{cfg['seeds']} seed(s) × {cfg['samples']} image(s), batch size {cfg['batch_size']}; "
        f"attacks: {cfg['attack']['optimizer']} for up to {cfg['attack']['iterations']} iterations. "
        "PSNR/SSIM of the reconstruction against the original image (scikit-image, data range 1; "
        f"PSNR capped at {PSNR_CAP:g} dB), mean ± 95% CI over images; label recovery over batches; "
        f"test accuracy after {cfg['train_epochs']} epoch(s) of SGD (lr {cfg['train_lr']}, batch "
        f"{cfg['train_batch']}) with that defence, mean ± 95% CI over seeds.",
        "",
        "| defence | attack | PSNR (dB) | SSIM | label recovery | test accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for d, cells in results["per_image"].items():
        for a, cell in cells.items():
            psnr = [min(v, PSNR_CAP) for v in cell["psnr"]]
            lines.append(
                f"| {defence_label(d, cfg, h)} | {a} | {_fmt(psnr, 2)} | {_fmt(cell['ssim'], 3)} | "
                f"{_fmt(cell['label'], 2)} | {_fmt(results['accuracy'][d], 3)} |"
            )
    c = results["constraint"]
    lines += [
        "",
        f"Transform (eq. 8): all three constraints met on {np.mean(c['satisfied']):.0%} of the attacked "
        f"batches (gradient distance {_fmt(c['grad_distance'], 3)} vs ε {cfg['transform']['epsilon']}; "
        f"RMS pixel distance ||X'-X||/√D {_fmt(c['data_rms'], 3)} vs {cfg['h_rms']}) and on "
        f"{np.mean(c['train_satisfied']):.0%} of the training batches (batch {cfg['train_batch']}).",
        "",
        f"Wall time: {results['seconds']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


def grid_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(key into results['grid'], row title): original, DLG/iDLG on plain, the stronger attack on
    DP and on the transformed gradient, and the transformed data itself."""
    cfg = results["config"]

    def stronger(d: str) -> str:
        cells = results["per_image"][d]
        return max(ATTACKS, key=lambda a: float(np.mean([min(v, PSNR_CAP) for v in cells[a]["psnr"]])))

    rows = [("original", "original"), ("DLG|none", "DLG · plain"), ("iDLG|none", "iDLG · plain")]
    a = stronger("dp")
    rows.append((f"{a}|dp", f"{a} · DP σ={cfg['dp_sigma']}"))
    a = stronger("transform")
    rows.append((f"{a}|transform", f"{a} · transformed"))
    rows.append(("transformed X'", "transformed X′\n(client's data)"))
    return rows


def grid_figsize(rows: int, cols: int) -> tuple[float, float]:
    return (max(5.0, 1.6 + 1.25 * cols), 0.9 + 1.35 * rows)


GRID_DPI = 100


def write_grid(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = grid_rows(results)
    grid = {k: np.asarray(v) for k, v in results["grid"].items()}
    cols = min(GRID_COLUMNS_MAX, len(grid["original"]))
    fig, axes = plt.subplots(len(rows), cols, figsize=grid_figsize(len(rows), cols), squeeze=False)
    for r, (key, title) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            img = np.clip(grid[key][c], 0, 1)
            img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if key != "original":
                psnr, _ = image_quality(grid["original"][c], grid[key][c])
                ax.set_title(f"{min(psnr, PSNR_CAP):.1f} dB", fontsize=8)
            else:
                ax.set_title(f"sample {c + 1}", fontsize=8)
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
    cfg = results["config"]
    fig.suptitle(
        f"Gradient inversion on {cfg['dataset']} ({cfg['model']}, seed 0)\n"
        "rows: attack · shared gradient; titles: PSNR vs the original",
        fontsize=9,
    )
    width, height = grid_figsize(len(rows), cols)
    fig.subplots_adjust(left=1.4 / width, right=0.98, top=1 - 0.75 / height, bottom=0.02, hspace=0.35)
    fig.savefig(path, dpi=GRID_DPI)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    from raysim.atomic import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "table.md", table_markdown(results))
    atomic_write_text(
        out / "results.json", json.dumps({k: v for k, v in results.items() if k != "grid"}, indent=1)
    )
    write_grid(results, out / "reconstructions.png")
