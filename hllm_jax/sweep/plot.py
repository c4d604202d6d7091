"""``scaling.png``: each fitted metric against parameters and training FLOPs, log-log, with its fit."""

from __future__ import annotations

import numpy as np

from hllm_jax.sweep.fit import predict

X_LABELS = {"params": "non-embedding parameters (item + user LLM)", "train_flops": "training FLOPs"}


def scaling_plot(rows: list[dict], fits: dict, metrics, xs, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, axes = plt.subplots(len(metrics), len(xs), figsize=(5.5 * len(xs), 3.8 * len(metrics)), squeeze=False)
    for i, m in enumerate(metrics):
        for j, xk in enumerate(xs):
            ax = axes[i][j]
            shown = [r for r in rows if r.get(xk) and r.get(m) is not None]
            if shown:
                x, y = (np.asarray([r[k] for r in shown]) for k in (xk, m))
                ax.scatter(x, y, color="C0", zorder=3)
                for r in shown:
                    ax.annotate(r["point"], (r[xk], r[m]), fontsize=7, xytext=(3, 3), textcoords="offset points")
                f = fits.get(f"{m}~{xk}")
                if f:
                    grid = np.geomspace(x.min(), x.max(), 50)
                    ax.plot(grid, predict(f, grid), color="C1",
                            label=f"{f['prefactor']:.3g} x^{f['exponent']:.3f} (+/-{f['exponent_stderr']:.3f})")
                    ax.legend(fontsize=8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            short = FuncFormatter(lambda v, _: f"{v:.4g}")  # narrow ranges: label the minor ticks too
            ax.yaxis.set_major_formatter(short)
            ax.yaxis.set_minor_formatter(short)
            ax.tick_params(axis="y", which="minor", labelsize=7)
            ax.set_xlabel(X_LABELS.get(xk, xk))
            ax.set_ylabel(m)
            ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
