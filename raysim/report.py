"""`raysim report`: plots and a Markdown table from one or more run directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from raysim.config import ConfigError

CURVES = (
    ("test_accuracy", "test accuracy"),
    ("test_loss", "test loss"),
    ("personal_accuracy", "personalised accuracy"),
    ("train_loss", "train loss"),
)


def load_run(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    rounds = run_dir / "rounds.parquet"
    if not rounds.is_file():
        raise ConfigError(f"{run_dir}: no rounds.parquet here; pass directories written by `raysim run`")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return pd.read_parquet(rounds), summary


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(runs: list[tuple[str, pd.DataFrame, dict[str, Any]]]) -> str:
    head = (
        "| run | algorithm | rounds | final test acc | best test acc | final personal acc | "
        "median s/round | total s | peak RSS MB | dropouts |"
    )
    lines = [head, "|" + "---|" * 10]
    for name, _df, s in runs:
        lines.append(
            f"| {name} | {s.get('algorithm', '-')} | {s.get('rounds', '-')} | {_fmt(s.get('final_test_accuracy'))} | "
            f"{_fmt(s.get('best_test_accuracy'))} | {_fmt(s.get('final_personal_accuracy'))} | "
            f"{_fmt(s.get('median_round_seconds'), 3)} | {_fmt(s.get('total_seconds'), 1)} | "
            f"{_fmt(s.get('peak_rss_mb'), 0)} | {s.get('dropouts', '-')} |"
        )
    return "\n".join(lines) + "\n"


def write_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise ConfigError("report: give at least one run directory")
    runs = []
    for d in run_dirs:
        df, s = load_run(Path(d))
        runs.append((Path(d).name, df, s))
    out = (
        Path(out)
        if out is not None
        else (Path(run_dirs[0]) / "plots" if len(run_dirs) == 1 else Path("report"))
    )
    out.mkdir(parents=True, exist_ok=True)
    for col, label in CURVES:
        if not any(col in df and df[col].notna().any() for _, df, _ in runs):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, df, _ in runs:
            if col in df:
                sel = df[["round", col]].dropna()
                ax.plot(sel["round"], sel[col], marker="." if len(sel) < 60 else None, label=name)
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{col}.png", dpi=120)
        plt.close(fig)
    (out / "summary.md").write_text(markdown_table(runs))
    return out
