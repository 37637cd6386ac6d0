import itertools

import networkx as nx
import pytest
import torch

from rm_exps.data.hamiltonian import (
    EDGE_SEP,
    SEP,
    SPECIAL_TOKENS,
    build_hamiltonian_cycle,
    format_example,
    is_hamiltonian_cycle,
    parse_graph,
    sample_examples,
    sample_graph,
)


def nx_is_hamiltonian_cycle(response: str, num_vertices: int, edges) -> bool:
    graph = nx.Graph(list(edges))
    graph.add_nodes_from(range(num_vertices))
    items = response.split(SEP)
    if not all(item.isdigit() for item in items):
        return False
    order = [int(item) for item in items]
    return (
        len(order) == num_vertices == graph.number_of_nodes()
        and set(order) == set(graph.nodes)
        and nx.is_simple_path(graph, order)
        and graph.has_edge(order[-1], order[0])
    )


def examples(seed, num_graphs=50, num_vertices=8, edge_p=0.3):
    return sample_examples(num_graphs, num_vertices, edge_p, torch.Generator().manual_seed(seed))


def test_reference_example_seed_982():
    # The digest's real example: the first graph drawn with seed 982, N=10, p=0.2.
    train, _ = build_hamiltonian_cycle(
        10, 0.2, num_train_graphs=1, num_test_graphs=1, generator=torch.Generator().manual_seed(982)
    )
    row = train[0]
    assert row["chosen"] == SEP.join("8 7 3 4 1 6 0 2 9 5".split())
    assert row["rejected"] == SEP.join("3 4 1 8 9 7 2 0 6 5".split())
    num_vertices, edges = parse_graph(row["prompt"])
    assert (num_vertices, len(edges)) == (10, 21)


def test_exact_format():
    row = format_example(4, [(1, 2), (0, 3), (2, 3), (0, 1)], [0, 1, 2, 3], [0, 2, 1, 3])
    assert row == {
        "prompt": "Vertices: <sep>0<sep>1<sep>2<sep>3\n"
        "Edges: <sep>1<edge_sep>2<sep>0<edge_sep>3<sep>2<edge_sep>3<sep>0<edge_sep>1",
        "chosen": "0<sep>1<sep>2<sep>3",
        "rejected": "0<sep>2<sep>1<sep>3",
    }
    assert SPECIAL_TOKENS == ("<sep>", "<edge_sep>") == (SEP, EDGE_SEP)


def test_generated_prompt_lists_planted_cycle_edges_only_when_p_is_zero():
    edges, cycle = sample_graph(6, 0.0, torch.Generator().manual_seed(0))
    assert sorted(cycle) == list(range(6))
    assert set(edges) == {(min(a, b), max(a, b)) for a, b in zip(cycle, cycle[1:] + cycle[:1])}
    assert all(u < v for u, v in edges)


@pytest.mark.parametrize("num_vertices,edge_p", [(8, 0.3), (10, 0.2), (5, 0.0)])
def test_chosen_is_a_hamiltonian_cycle_and_rejected_is_not(num_vertices, edge_p):
    for row in examples(1, 40, num_vertices, edge_p):
        n, edges = parse_graph(row["prompt"])
        assert n == num_vertices
        assert nx_is_hamiltonian_cycle(row["chosen"], n, edges)
        assert not nx_is_hamiltonian_cycle(row["rejected"], n, edges)
        assert sorted(map(int, row["rejected"].split(SEP))) == list(range(n))  # a permutation, just not a cycle


def test_is_hamiltonian_cycle_agrees_with_networkx_on_random_orders():
    g = torch.Generator().manual_seed(7)
    for row in examples(2, 30, 6, 0.5):
        n, edges = parse_graph(row["prompt"])
        candidates = [row["chosen"], row["rejected"]]
        candidates += [SEP.join(map(str, torch.randperm(n, generator=g).tolist())) for _ in range(20)]
        for response in candidates:
            assert is_hamiltonian_cycle(response, n, edges) == nx_is_hamiltonian_cycle(response, n, edges)


def test_is_hamiltonian_cycle_rejects_malformed_responses():
    n, edges = 4, {(0, 1), (1, 2), (2, 3), (0, 3)}
    assert is_hamiltonian_cycle("0<sep>1<sep>2<sep>3", n, edges)
    assert is_hamiltonian_cycle("0<sep>1<sep>2<sep>3", n, {(1, 0), (2, 1), (3, 2), (3, 0)})  # any orientation
    assert not is_hamiltonian_cycle("0<sep>1<sep>2<sep>3<sep>0", n, edges)  # no closing repeat
    assert not is_hamiltonian_cycle("0<sep>1<sep>2", n, edges)
    # the reference's check: every item str.isdigit() after a plain split, so whitespace makes a response invalid
    for spaced in (" 0<sep>1<sep>2<sep>3", "0 <sep> 1<sep>2<sep>3", "0<sep>1<sep>2<sep>3\n", "0<sep>1<sep>2<sep> 3"):
        assert not is_hamiltonian_cycle(spaced, n, edges), spaced
    assert not is_hamiltonian_cycle("0<sep>1<sep>1<sep>3", n, edges)
    assert not is_hamiltonian_cycle("0<sep>1<sep>2<sep>x", n, edges)
    assert not is_hamiltonian_cycle("0<sep>2<sep>1<sep>3", n, edges)
    assert not is_hamiltonian_cycle("", n, edges)


def test_parse_graph_ignores_text_after_the_edges():
    row = examples(3, 1)[0]
    expected = parse_graph(row["prompt"])
    templated = f"<|user|>\n{row['prompt']}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n3<sep>4"
    assert parse_graph(templated) == expected
    assert parse_graph(row["prompt"] + "\nsomething else 1<edge_sep>2") == expected
    with pytest.raises(ValueError, match="Edges"):
        parse_graph("Vertices: <sep>0<sep>1")


def test_same_seed_same_data_different_seed_different():
    assert examples(5, 20).to_list() == examples(5, 20).to_list()
    assert examples(5, 20).to_list() != examples(6, 20).to_list()


def test_train_graphs_are_drawn_before_test_graphs():
    train, test = build_hamiltonian_cycle(7, 0.3, 5, 3, generator=torch.Generator().manual_seed(11))
    both = examples(11, 8, 7, 0.3)
    assert train.to_list() + test.to_list() == both.to_list()


def test_number_of_edges_matches_expectation():
    num_vertices, edge_p, num_graphs = 10, 0.2, 300
    counts = [len(parse_graph(p)[1]) for p in examples(8, num_graphs, num_vertices, edge_p)["prompt"]]
    expected = num_vertices + edge_p * (num_vertices * (num_vertices - 1) / 2 - num_vertices)  # 17
    assert abs(sum(counts) / num_graphs - expected) < 0.6
    assert min(counts) >= num_vertices


def test_complete_graph_has_no_rejected_order():
    with pytest.raises(ValueError, match="10 tries"):
        build_hamiltonian_cycle(5, 1.0, 1, 1, generator=torch.Generator().manual_seed(0))


def test_all_orders_of_a_small_cycle():
    # On the 5-cycle exactly the 10 rotations/reflections of 0-1-2-3-4 are Hamiltonian cycles.
    n, edges = 5, {(0, 1), (1, 2), (2, 3), (3, 4), (0, 4)}
    found = [p for p in itertools.permutations(range(n)) if is_hamiltonian_cycle(SEP.join(map(str, p)), n, edges)]
    assert len(found) == 10
