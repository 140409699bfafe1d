"""Plots of the training benches' results, one PNG beside each JSON: loss curves and their distance
from the recipe's (train_equivalence), tokens/s and peak memory per case (train_throughput).

    python bench/plot_results.py bench/results/train_equivalence-gpu-h200-unsloth.json \
        bench/results/train_throughput-qwen2.5-7b-h200-consolidated.json

The benches call it after writing their JSON; where matplotlib is missing (the GPU image) they say
so and the JSON stands alone.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

NOISE = "recipe_other_init"
COLOURS = {"recipe": "0.45", "unsloth": "tab:orange", "lean": "tab:green", "loragate": "tab:blue"}
LEVER_COLOURS = ["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:green"]
TARGET = 1.3  # [gpu-speed-2]'s fixed-row target against Unsloth, drawn where Unsloth ran


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(name: str) -> str:
    return {"recipe": "recipe", NOISE: "recipe, other LoRA init (noise)",
            "loragate": "loragate (defaults)"}.get(name, name.replace("_", " "))


def equivalence_plot(result: dict, title: str):
    """Left: each run's loss per step; right: its |difference| from the recipe's, the noise dashed."""
    plt = _plt()
    curves = {k[:-len("_losses")]: v for k, v in result.items() if k.endswith("_losses") and isinstance(v, list)}
    base = curves["recipe"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    levers = iter(LEVER_COLOURS * 3)
    for name, losses in curves.items():
        style = {"linestyle": "--", "color": "0.6"} if name == NOISE else {"color": COLOURS.get(name) or next(levers)}
        left.plot(range(1, len(losses) + 1), losses, label=_label(name), linewidth=1.4, **style)
        if name != "recipe":
            right.plot(range(1, len(losses) + 1), [abs(x - y) for x, y in zip(losses, base)], linewidth=1.2, **style)
    left.set(xlabel="step", ylabel="training loss", title=title)
    right.set(xlabel="step", ylabel="|loss - recipe's loss|", title="distance from the recipe (same rows, same order)")
    left.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def throughput_plot(result: dict, title: str):
    """One bar per case: tokens/s (whiskers: the slowest and fastest of --repeat rounds), annotated
    with peak GPU memory and the ratio to Unsloth's run."""
    plt = _plt()
    cases = {c: r for c, r in result["headline"].items() if "tokens_per_s" in r}
    unsloth = next((r["tokens_per_s"] for c, r in cases.items() if c.startswith("unsloth")), None)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(cases) + 1.6))
    names = list(cases)[::-1]
    speeds = [cases[c]["tokens_per_s"] for c in names]
    rounds = [cases[c].get("tokens_per_s_rounds", [cases[c]["tokens_per_s"]]) for c in names]
    spread = [[s - min(r) for s, r in zip(speeds, rounds)], [max(r) - s for s, r in zip(speeds, rounds)]]
    ax.barh(names, speeds, xerr=spread, capsize=3, color=[COLOURS.get(c.split("-")[0], "tab:blue") for c in names])
    for y, (case, fastest) in enumerate(zip(names, map(max, rounds))):
        r = cases[case]
        note = f" {r['tokens_per_s']:,.0f}" + (f", {r['peak_allocated_gib']:.2f} GiB" if "peak_allocated_gib" in r else "")
        note += f", {r['tokens_per_s'] / unsloth:.2f}x Unsloth" if unsloth else ""
        ax.text(fastest, y, note, va="center", fontsize=8)
    if unsloth:
        ax.axvline(TARGET * unsloth, color="tab:orange", linestyle="--", linewidth=1, label=f"{TARGET}x Unsloth")
        ax.legend(loc="lower right", fontsize=8)
    ax.set(xlabel="useful tokens/s", xlim=(0, max(map(max, rounds)) * 1.45), title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def plot(path: str | Path) -> Path:
    """The PNG for one result file, written beside it; ValueError for a file of another kind."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON result ({type(e).__name__})") from None
    if isinstance(result, dict) and isinstance(result.get("recipe_losses"), list):
        fig = equivalence_plot(result, f"{path.stem} ({result.get('device', '?')})")
    elif isinstance(result, dict) and isinstance(result.get("headline"), dict):
        fig = throughput_plot(result, f"{path.stem} ({result.get('device', '?')})")
    else:
        raise ValueError(f"{path}: neither a train_equivalence nor a train_throughput result")
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    _plt().close(fig)
    return out


def plot_if_possible(path: Path) -> None:
    """What the benches call: the PNG where matplotlib is installed, else a line on how to draw it."""
    try:
        print(f"plot: {plot(path)}")
    except ImportError:
        print(f"no matplotlib here: `python bench/plot_results.py {path}` draws it elsewhere")


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python bench/plot_results.py RESULT.json [RESULT.json ...]")
    for name in sys.argv[1:]:
        try:
            print(plot(name))
        except ValueError as e:
            sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
