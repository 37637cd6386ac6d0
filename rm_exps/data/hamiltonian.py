"""Graphs with a planted Hamiltonian cycle, as preference pairs (reference §6.3).

The task where verifying is easy and generating is hard (Sec. IV.B of arXiv 2306.06523): the prompt
lists a graph, `chosen` is a Hamiltonian cycle of it and `rejected` a vertex order that is not one.
Every random draw comes from one torch.Generator, in the reference's exact order, so a seed gives
the reference's graphs byte for byte:
  per graph: randperm(N) cycle; one rand(1) per non-cycle pair i<j (lexicographic), edge if < p;
  randperm(#edges) shuffle; then up to 10 randperm(N) until one is not a cycle.
All train graphs are drawn before all test graphs.

parse_graph / is_hamiltonian_cycle read the text format back, for checks and generation metrics.
"""

import re

import datasets
import torch

SEP = "<sep>"
EDGE_SEP = "<edge_sep>"
SPECIAL_TOKENS = (SEP, EDGE_SEP)
MAX_REJECTED_DRAWS = 10

Edge = tuple[int, int]


def _cycle_edges(order: list[int]) -> list[Edge]:
    """Edges (min, max) between cyclically consecutive vertices, last -> first included."""
    n = len(order)
    return [(min(order[i], order[(i + 1) % n]), max(order[i], order[(i + 1) % n])) for i in range(n)]


def sample_graph(num_vertices: int, edge_p: float, generator: torch.Generator) -> tuple[list[Edge], list[int]]:
    """A random graph containing a planted Hamiltonian cycle: (shuffled edge list, the cycle)."""
    cycle = torch.randperm(num_vertices, generator=generator).tolist()
    edges = _cycle_edges(cycle)
    planted = set(edges)
    for i in range(num_vertices):
        for j in range(i + 1, num_vertices):
            if (i, j) in planted:
                continue  # no draw for cycle edges
            if torch.rand(1, generator=generator).item() < edge_p:
                edges.append((i, j))
    order = torch.randperm(len(edges), generator=generator).tolist()
    return [edges[k] for k in order], cycle


def sample_non_cycle(num_vertices: int, edges: set[Edge], generator: torch.Generator) -> list[int]:
    """A random vertex order that is not a Hamiltonian cycle of the graph (ValueError after 10 tries)."""
    for _ in range(MAX_REJECTED_DRAWS):
        order = torch.randperm(num_vertices, generator=generator).tolist()
        if any(edge not in edges for edge in _cycle_edges(order)):
            return order
    raise ValueError(f"Failed to draw a vertex order that is not a Hamiltonian cycle in {MAX_REJECTED_DRAWS} tries.")


def format_example(num_vertices: int, edges: list[Edge], cycle: list[int], non_cycle: list[int]) -> dict:
    """The reference's text format: "Vertices: <sep>0<sep>1...\\nEdges: <sep>u<edge_sep>v<sep>..."."""
    vertices = SEP + SEP.join(str(v) for v in range(num_vertices))
    edge_list = SEP + SEP.join(f"{u}{EDGE_SEP}{v}" for u, v in edges)
    return {
        "prompt": f"Vertices: {vertices}\nEdges: {edge_list}",
        "chosen": SEP.join(map(str, cycle)),
        "rejected": SEP.join(map(str, non_cycle)),
    }


def sample_examples(num_graphs: int, num_vertices: int, edge_p: float, generator: torch.Generator) -> datasets.Dataset:
    rows = []
    for _ in range(num_graphs):
        edges, cycle = sample_graph(num_vertices, edge_p, generator)
        non_cycle = sample_non_cycle(num_vertices, set(edges), generator)
        rows.append(format_example(num_vertices, edges, cycle, non_cycle))
    return datasets.Dataset.from_list(rows)


def build_hamiltonian_cycle(
    num_vertices: int = 10,
    edge_p: float = 0.2,
    num_train_graphs: int = 5000,
    num_test_graphs: int = 200,
    generator: torch.Generator | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, test) preference datasets; train graphs are drawn first. generator=None uses torch's
    default-seeded Generator(), so the result is still deterministic."""
    if num_vertices < 3:
        raise ValueError(f"num_vertices must be at least 3, got {num_vertices}")
    generator = generator if generator is not None else torch.Generator()
    train = sample_examples(num_train_graphs, num_vertices, edge_p, generator)
    test = sample_examples(num_test_graphs, num_vertices, edge_p, generator)
    return train, test


def _line_after(label: str, text: str) -> str:
    match = re.search(re.escape(label) + r"(.*)", text)  # "." stops at the end of the line
    if match is None:
        raise ValueError(f"no {label!r} line in the Hamiltonian-cycle prompt")
    return match.group(1)


def parse_graph(prompt: str) -> tuple[int, set[Edge]]:
    """(number of vertices, set of (u, v) edges with u < v) from a prompt in the format above.

    Works on a chat-templated prompt too: edges are read from "Edges: " to the end of that line,
    and any template text after the last edge is ignored (the reference cut at the eos string).
    """
    vertices = [item.strip() for item in _line_after("Vertices:", prompt).split(SEP)]
    num_vertices = sum(1 for item in vertices if item.isascii() and item.isdigit())
    pairs = re.findall(r"(\d+)\s*" + re.escape(EDGE_SEP) + r"\s*(\d+)", _line_after("Edges:", prompt))
    return num_vertices, {(min(int(u), int(v)), max(int(u), int(v))) for u, v in pairs}


def is_hamiltonian_cycle(response: str, num_vertices: int, edges: set[Edge]) -> bool:
    """True if the <sep>-separated response lists each of the n vertices once and every cyclically
    consecutive pair (last -> first included) is an edge. No repeat of the start vertex at the end.
    As the reference: a plain split on <sep>, every item ASCII digits only (whitespace anywhere: invalid)."""
    items = response.split(SEP)
    if len(items) != num_vertices or not all(item.isascii() and item.isdigit() for item in items):
        return False
    order = [int(item) for item in items]
    if len(set(order)) != num_vertices:
        return False
    undirected = {(min(u, v), max(u, v)) for u, v in edges}
    return all(edge in undirected for edge in _cycle_edges(order))
