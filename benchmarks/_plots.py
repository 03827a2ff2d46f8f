"""The finishing steps every benchmark figure shares: labels, grid, legend, save, close."""

from __future__ import annotations

from pathlib import Path


def finish(fig, ax, path: Path, *, title: str, xlabel: str, ylabel: str, legend_size: int = 8) -> str:
    """Label, grid and legend ``ax``, write ``fig`` to ``path`` (110 dpi) and close it; return the path."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
