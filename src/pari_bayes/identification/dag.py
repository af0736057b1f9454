"""Loading and validating the assumed causal graph (``models/dag.dot``).

The graph is a DOT file that people can read and DoWhy can use. Each node is a survey
column (its name, or its ``column`` attribute) or is declared latent (``latent="true"``).
The loader refuses a graph that could silently mislead identification: a cycle, an edge
that names an undeclared node (usually a typo), an observed node whose column the survey
lacks, or a node with no column that is not declared latent.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import pandas as pd

from pari_bayes._paths import DEFAULT_DAG
from pari_bayes.codebook import Codebook, load_codebook
from pari_bayes.errors import DAGError

__all__ = [
    "CausalDAG",
    "load_dag",
    "dag_template",
    "DERIVED_COLUMNS",
    "TREATMENT_NODES",
]

#: Columns the identification layer derives itself (not in ``Survey.data``), with meaning.
DERIVED_COLUMNS = {
    "community_age_months": "months from the community's formation to its survey (registry)",
}

#: DAG nodes that carry the two exposures: own participation (A), community CBO presence (S).
TREATMENT_NODES = {"participation": "cbo_participation", "presence": "cbo_presence"}

_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}
_PSEUDO_NODES = {"node", "edge", "graph"}


def _unquote(text: object) -> str:
    value = str(text).strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value.replace('\\"', '"')


def _flag(value: object, name: str, node: str, path: Path) -> bool:
    text = _unquote(value).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DAGError(
        f"{path}: node {node!r} has {name}={_unquote(value)!r}; allowed: true/false (yes/no)"
    )


@dataclass
class CausalDAG:
    """The assumed causal graph with the survey column behind each observed node.

    Attributes
    ----------
    graph
        Directed acyclic graph; node attributes ``latent`` (bool), ``column`` (str or
        ``None``), ``adjust`` (bool: may enter an adjustment set), ``role`` and ``label``;
        edge attribute ``why`` (justification).
    path
        File the graph was read from (``"<graph>"`` if built in memory).

    """

    graph: nx.DiGraph
    path: Path | str = "<graph>"
    notes: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> tuple[str, ...]:
        """All nodes, in file order."""
        return tuple(self.graph.nodes)

    @property
    def latent(self) -> tuple[str, ...]:
        """Nodes with no survey column."""
        return tuple(n for n, d in self.graph.nodes(data=True) if d["latent"])

    @property
    def observed(self) -> tuple[str, ...]:
        """Nodes with a survey (or derived) column."""
        return tuple(n for n, d in self.graph.nodes(data=True) if not d["latent"])

    @property
    def adjustable(self) -> tuple[str, ...]:
        """Observed nodes that may enter an adjustment set."""
        return tuple(n for n, d in self.graph.nodes(data=True) if not d["latent"] and d["adjust"])

    def column(self, node: str) -> str:
        """Survey column of an observed node.

        Raises
        ------
        DAGError
            If the node is unknown or latent.

        """
        if node not in self.graph:
            raise DAGError(f"{self.path}: no node {node!r}; nodes: {', '.join(self.nodes)}")
        col = self.graph.nodes[node]["column"]
        if col is None:
            raise DAGError(f"{self.path}: node {node!r} is latent and has no survey column")
        return col

    def role(self, node: str) -> str:
        """Return the node's ``role`` attribute ('' if none)."""
        return self.graph.nodes[node].get("role", "")

    def unobserved_confounders(self) -> tuple[str, ...]:
        """Latent nodes with two or more children (they can confound)."""
        return tuple(
            n
            for n in self.latent
            if self.graph.out_degree(n) >= 2 and self.role(n) not in ("factor",)
        )

    def indicators(self, factor: str) -> tuple[str, ...]:
        """Observed children of a latent factor (its indicators), in file order."""
        return tuple(c for c in self.graph.successors(factor) if not self.graph.nodes[c]["latent"])

    def edges_with_reasons(self) -> list[tuple[str, str, str]]:
        """Every edge with its justification (``why``), in file order."""
        return [(u, v, d.get("why", "")) for u, v, d in self.graph.edges(data=True)]

    def without(self, nodes: Iterable[str]) -> CausalDAG:
        """Return a copy with some nodes (and their edges) removed."""
        graph = self.graph.copy()
        graph.remove_nodes_from(list(nodes))
        return CausalDAG(graph=graph, path=self.path, notes=list(self.notes))

    def outcome_graph(self, dimension: str) -> nx.DiGraph:
        """Return the graph used to identify effects on one dimension.

        The dimension's latent factor is kept as the (observed) outcome node: its measured
        score stands for it. The other factors and every indicator are dropped: they are
        descendants of the outcome or unrelated to it, so they never enter an adjustment
        set. This rests on the measurement assumption that exposures and covariates reach
        the indicators only through the factor (no edge into an indicator other than from
        its factor), which the loader checks.
        """
        if dimension not in self.graph:
            raise DAGError(f"{self.path}: no node for dimension {dimension!r}")
        drop = [
            n
            for n, d in self.graph.nodes(data=True)
            if n != dimension and (d.get("role") in ("factor", "indicator"))
        ]
        graph = self.graph.copy()
        graph.remove_nodes_from(drop)
        return graph

    def to_dot(self) -> str:
        """Return the graph as DOT text (latent nodes marked ``observed="no"`` for DoWhy)."""
        lines = ["digraph pari_dag {"]
        for n, d in self.graph.nodes(data=True):
            observed = "no" if d["latent"] or not d["adjust"] else "yes"
            lines.append(f'  "{n}" [observed="{observed}"];')
        for u, v in self.graph.edges:
            lines.append(f'  "{u}" -> "{v}";')
        lines.append("}")
        return "\n".join(lines) + "\n"


def _available_columns(survey: object, codebook: Codebook) -> tuple[set[str], bool]:
    """Columns a node may map to, and whether they come from actual data."""
    if survey is None:
        derived = {
            "cbo_presence",
            "cbo_existence",
            "exposure",
            "income_level",
            "income_scale",
        }
        return set(codebook.columns) | derived | set(DERIVED_COLUMNS), False
    data = getattr(survey, "data", survey)
    if isinstance(data, pd.DataFrame):
        columns = set(map(str, data.columns))
    else:
        columns = set(map(str, data))
    return columns | set(DERIVED_COLUMNS), True


def _read_dot(path: Path):
    import pydot

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DAGError(f"{path}: DAG file not found; pass --dag FILE.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DAGError(f"{path}: cannot read the DAG file: {exc}") from exc
    try:
        graphs = pydot.graph_from_dot_data(text)
    except Exception as exc:  # pydot raises bare exceptions on syntax errors
        raise DAGError(f"{path}: not a valid DOT file: {exc}") from exc
    if not graphs:
        raise DAGError(f"{path}: not a valid DOT file (no graph found).")
    if len(graphs) > 1:
        raise DAGError(f"{path}: holds {len(graphs)} graphs; put exactly one digraph in it.")
    dot = graphs[0]
    if dot.get_type() != "digraph":
        raise DAGError(f"{path}: the graph is undirected ({dot.get_type()}); write a digraph.")
    return dot


def _collect(dot) -> tuple[list, list]:
    nodes, edges = list(dot.get_nodes()), list(dot.get_edges())
    for sub in dot.get_subgraph_list():
        sub_nodes, sub_edges = _collect(sub)
        nodes += sub_nodes
        edges += sub_edges
    return nodes, edges


def load_dag(
    path: str | os.PathLike | None = None,
    survey: object | None = None,
    codebook: Codebook | None = None,
) -> CausalDAG:
    """Read and validate the causal graph.

    Parameters
    ----------
    path
        DOT file; the bundled ``models/dag.dot`` by default.
    survey
        A :class:`~pari_bayes.survey.Survey`, a DataFrame or an iterable of column names to
        check the observed nodes against. Without it, nodes are checked against the
        codebook and the columns the survey step derives.
    codebook
        Codebook used to check the measurement part (``survey.codebook`` or the bundled
        one by default).

    Returns
    -------
    CausalDAG

    Raises
    ------
    DAGError
        Naming the file and the node or edge at fault: a cycle, an edge to an undeclared
        node, a column the survey lacks, a node with no column not declared latent, or an
        indicator not measured by its factor.

    Examples
    --------
    >>> from pari_bayes.identification import load_dag
    >>> dag = load_dag()
    >>> "prior_sociability" in dag.latent
    True

    """
    path = Path(path) if path is not None else DEFAULT_DAG
    if codebook is None:
        codebook = getattr(survey, "codebook", None) or load_codebook()
    dot = _read_dot(path)
    raw_nodes, raw_edges = _collect(dot)
    columns, from_data = _available_columns(survey, codebook)
    graph = nx.DiGraph()
    for node in raw_nodes:
        name = _unquote(node.get_name())
        if name in _PSEUDO_NODES:
            continue
        attrs = {k: _unquote(v) for k, v in node.get_attributes().items()}
        if name in graph:
            raise DAGError(f"{path}: node {name!r} is declared twice; declare each node once.")
        latent = _flag(attrs.get("latent", "false"), "latent", name, path)
        if "observed" in attrs:  # DoWhy's spelling
            latent = latent or not _flag(attrs["observed"], "observed", name, path)
        adjust = _flag(attrs.get("adjust", "true"), "adjust", name, path)
        column = None if latent else attrs.get("column", name)
        graph.add_node(
            name,
            latent=latent,
            column=column,
            adjust=adjust,
            role=attrs.get("role", ""),
            label=attrs.get("label", name),
        )
    for edge in raw_edges:
        src, dst = _unquote(edge.get_source()), _unquote(edge.get_destination())
        for end in (src, dst):
            if end not in graph:
                raise DAGError(
                    f"{path}: edge {src} -> {dst} uses unknown node {end!r}, which is not "
                    'declared; declare it as a node (latent="true" if unobserved) or fix '
                    "the spelling."
                )
        if src == dst:
            raise DAGError(f"{path}: edge {src} -> {dst} is a self-loop; a DAG has none.")
        attrs = {k: _unquote(v) for k, v in edge.get_attributes().items()}
        graph.add_edge(src, dst, why=attrs.get("why", attrs.get("comment", "")))
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        loop = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        raise DAGError(f"{path}: the graph has a cycle: {loop}; a causal DAG must be acyclic.")
    for name, data in graph.nodes(data=True):
        if data["latent"]:
            continue
        col = data["column"]
        if col in columns:
            continue
        if from_data and (col in codebook or col in _available_columns(None, codebook)[0]):
            raise DAGError(
                f"{path}: node {name!r} needs column {col!r}, which is missing from the "
                f"survey data (columns: {', '.join(sorted(columns))}); add the column or "
                'declare the node latent="true".'
            )
        raise DAGError(
            f"{path}: node {name!r} has no survey column ({col!r} is neither in the survey "
            'nor in the codebook) and is not declared latent; add latent="true" to the '
            'node if it is unobserved, or give it column="<survey column>".'
        )
    _check_measurement(graph, codebook, path)
    for role_node in TREATMENT_NODES.values():
        if role_node not in graph:
            raise DAGError(
                f"{path}: the graph has no node {role_node!r}; the exposures "
                f"{', '.join(TREATMENT_NODES.values())} must be nodes."
            )
    return CausalDAG(graph=graph, path=path)


def _check_measurement(graph: nx.DiGraph, codebook: Codebook, path: Path) -> None:
    """Each dimension present must be latent and measure exactly its codebook indicators."""
    for dimension in codebook.dimensions:
        if dimension not in graph:
            continue
        if not graph.nodes[dimension]["latent"]:
            raise DAGError(
                f'{path}: dimension {dimension!r} must be a latent factor (latent="true"); '
                "its indicators are the observed columns."
            )
        graph.nodes[dimension]["role"] = graph.nodes[dimension]["role"] or "factor"
        expected = codebook.indicators.get(dimension, ())
        for item in expected:
            if item not in graph or not graph.has_edge(dimension, item):
                raise DAGError(
                    f"{path}: indicator {item!r} of {dimension!r} (codebook "
                    f"{codebook.path}) is missing or not measured by it; add the edge "
                    f"{dimension} -> {item}."
                )
            graph.nodes[item]["role"] = "indicator"
            parents = [p for p in graph.predecessors(item) if p != dimension]
            if parents:
                raise DAGError(
                    f"{path}: indicator {item!r} has parent(s) {', '.join(parents)} besides "
                    f"its factor {dimension!r}; effects must reach indicators only through "
                    "the factor (measurement invariance) for the score to stand in for it."
                )


def _dot_attrs(attrs: dict[str, object]) -> str:
    import json

    parts = [f"{k}={json.dumps(str(v), ensure_ascii=False)}" for k, v in attrs.items()]
    return f" [{', '.join(parts)}]" if parts else ""


def dag_template(codebook: Codebook, base: str | os.PathLike | None = None) -> str:
    """Draft a causal graph for a survey's codebook from a base graph (``pari-bayes init``).

    The base graph (the bundled ``models/dag.dot`` by default) keeps its design,
    covariate, confounder and exposure nodes whose columns the codebook has (or that are
    latent); its factor and indicator nodes are replaced by the codebook's dimensions
    (latent factors) and their indicators. Every edge the base graph draws into *all* of
    its factors (exposures, covariates, the unobserved confounder) is drawn into every new
    dimension, with the base edge's justification marked as a template to review; edges
    into only some base factors are dropped; each dimension measures exactly its codebook
    indicators.

    Returns
    -------
    str
        DOT text that :func:`load_dag` reads with ``codebook``.
    """
    base_dag = load_dag(base)
    graph = base_dag.graph
    columns, _ = _available_columns(None, codebook)
    factors = [n for n, d in graph.nodes(data=True) if d["role"] == "factor"]
    items = {n for n, d in graph.nodes(data=True) if d["role"] == "indicator"}
    keep = []
    for name, data in graph.nodes(data=True):
        if name in factors or name in items:
            continue
        if not data["latent"] and data["column"] not in columns:
            continue  # a covariate this survey does not have
        keep.append(name)
    kept = set(keep)
    lines = [
        f"// Causal graph drafted by `pari-bayes init` from {base_dag.path.name} for the codebook",
        f"// {codebook.path}. REVIEW every edge: the template copies the base graph's",
        "// assumptions about the exposures and covariates onto every dimension; edges whose",
        "// `why` starts with 'template' were not written for this survey.",
        "",
        "digraph pari_dag {",
        "  rankdir = LR;",
        "",
    ]
    for name in keep:
        data = graph.nodes[name]
        attrs: dict[str, object] = {}
        if data["latent"]:
            attrs["latent"] = "true"
        elif data["column"] != name:
            attrs["column"] = data["column"]
        if not data["adjust"]:
            attrs["adjust"] = "no"
        if data["role"]:
            attrs["role"] = data["role"]
        if data["label"] != name:
            attrs["label"] = data["label"]
        lines.append(f"  {name}{_dot_attrs(attrs)};")
    lines.append("")
    for dim in codebook.dimensions:
        lines.append(f"  {dim}{_dot_attrs({'latent': 'true', 'role': 'factor'})};")
        for item in codebook.indicators[dim]:
            lines.append(f"  {item}{_dot_attrs({'role': 'indicator'})};")
    lines.append("")
    for src, dst, data in graph.edges(data=True):
        if src in kept and dst in kept:
            lines.append(f"  {src} -> {dst}{_dot_attrs({'why': data['why']})};")
    into_all = (
        [
            (src, graph.edges[src, factors[0]]["why"])
            for src in graph.predecessors(factors[0])
            if src in kept and all(graph.has_edge(src, f) for f in factors)
        ]
        if factors
        else []
    )
    for dim in codebook.dimensions:
        for src, why in into_all:
            lines.append(f"  {src} -> {dim}{_dot_attrs({'why': f'template (base graph: {why})'})};")
        for item in codebook.indicators[dim]:
            lines.append(
                f"  {dim} -> {item}{_dot_attrs({'why': 'measurement: codebook dimension'})};"
            )
    lines.append("}")
    return "\n".join(lines) + "\n"
