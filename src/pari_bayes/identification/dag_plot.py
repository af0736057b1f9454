"""The causal graph as a figure people can read (the report's and ``identification/dag.png``).

With graphviz's ``dot`` binary on PATH, graphviz lays the graph out; without it (a fresh
machine has none), a pure-Python layered layout: networkx's topological generations as
columns, ordered by the barycenter heuristic, labels beside small nodes, never under them.
Sized for the report's 1,100 px column at 100 dpi.
"""

from __future__ import annotations

import io
import shutil
import subprocess

import networkx as nx

from pari_bayes.identification.dag import CausalDAG

__all__ = ["dag_png", "draw_dag", "figure_png", "pyplot"]

#: Smallest font (points) of the figure; the report's figures use the same.
FONT = 10
_DPI = 100
_WIDTH_IN = 11.0


def pyplot():
    """Return ``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> bytes:
    """Return a figure as PNG bytes at the report's 100 dpi (no timestamp) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    pyplot().close(fig)
    return buf.getvalue()


_plt, _png = pyplot, figure_png


def _graphviz_png(dot_text: str) -> bytes | None:
    """Lay out and draw with graphviz's ``dot`` when the binary is installed."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, "-Tpng", "-Gdpi=80", "-Nfontsize=14"],
            input=dot_text.encode(),
            capture_output=True,
            timeout=60,
            check=True,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    return proc.stdout or None


def dag_png(dag: CausalDAG) -> bytes:
    """Draw a :class:`~pari_bayes.identification.dag.CausalDAG` readably (PNG bytes).

    With graphviz's ``dot`` binary on PATH, graphviz lays it out (labels inside boxes
    sized to them); without it (a fresh CI machine), a pure-Python layout: networkx's
    topological generations as columns, labels beside small nodes, never under them.
    """
    return draw_dag(dag.graph, set(dag.latent))


def draw_dag(graph: nx.DiGraph, latent: set[str]) -> bytes:
    """Draw a causal graph whose ``latent`` nodes are unobserved (PNG bytes).

    See :func:`dag_png`.
    """
    dot_lines = ["digraph g {", "rankdir=LR; node [shape=box, style=rounded];"]
    for node in graph:
        style = ', style="dashed,rounded", color=grey40, fontcolor=grey30' if node in latent else ""
        dot_lines.append(f'"{node}" [label="{node.replace("_", " ")}"{style}];')
    dot_lines += [f'"{u}" -> "{v}";' for u, v in graph.edges]
    dot_lines.append("}")
    png = _graphviz_png("\n".join(dot_lines))
    if png is not None:
        return png
    plt = _plt()
    order = {n: i for i, n in enumerate(graph)}
    layers = [sorted(g, key=order.get) for g in nx.topological_generations(graph)]
    _order_layers(graph, layers)
    height = max(len(g) for g in layers)
    pos = {}
    for x, nodes in enumerate(layers):
        for i, node in enumerate(nodes):
            pos[node] = (
                x * 2.0,
                (height - 1) / 2.0 - i * (height - 1) / max(1, len(nodes) - 1)
                if len(nodes) > 1
                else 0.0,
            )
    fig, ax = plt.subplots(figsize=(_WIDTH_IN, 0.42 * height + 1.2))
    nx.draw_networkx_edges(
        graph,
        pos,
        ax=ax,
        alpha=0.3,
        arrowsize=9,
        node_size=60,
        width=0.8,
        connectionstyle="arc3,rad=0.05",
    )
    for is_latent in (False, True):
        nodes = [n for n in graph if (n in latent) == is_latent]
        nx.draw_networkx_nodes(
            graph,
            pos,
            nodelist=nodes,
            ax=ax,
            node_size=60,
            node_color="#ffffff" if is_latent else "#3182bd",
            edgecolors="#555555",
            linewidths=1.0,
        )
    for node, (x, y) in pos.items():
        sink = graph.out_degree(node) == 0  # last column: label to the right
        ax.annotate(
            node.replace("_", " "),
            (x, y),
            xytext=(6, 0) if sink else (0, 7),
            textcoords="offset points",
            ha="left" if sink else "center",
            va="center" if sink else "bottom",
            fontsize=FONT - 1,
            color="#555555" if node in latent else "#111111",
            style="italic" if node in latent else "normal",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
        )
    ax.set_xlim(-0.9, 2.0 * (len(layers) - 1) + 2.6)
    ax.set_title(
        "Assumed causal graph, causes left to effects right (hollow, italic = unobserved)",
        fontsize=FONT + 1,
    )
    ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _order_layers(graph, layers: list[list[str]], sweeps: int = 4) -> None:
    """Order each layer's nodes by the mean rank of their neighbours, down and up.

    The barycenter heuristic of Sugiyama et al. (1981): fewer edge crossings.
    """
    for _ in range(sweeps):
        for down in (True, False):
            rank = {n: i / max(1, len(g) - 1) for g in layers for i, n in enumerate(g)}
            span = range(1, len(layers)) if down else range(len(layers) - 2, -1, -1)
            for k in span:
                near = {
                    n: [rank[m] for m in (graph.predecessors(n) if down else graph.successors(n))]
                    for n in layers[k]
                }
                layers[k].sort(
                    key=lambda n, near=near, rank=rank: (
                        sum(near[n]) / len(near[n]) if near[n] else rank[n]
                    )
                )
