"""Thread a transcript's lines into conversation paths by their `parentUuid` links.

Every line becomes a `Node`; dropped lines (progress, system, meta) are kept as links so the chain
stays whole. `thread` skips those links, keeps per root the path to the newest leaf (a rewind
abandons the older branch) and re-attaches the parallel tool-call forks that hang off that path,
then orders the kept turns as the conversation read them. Parents that are missing or form a cycle
are counted, never fatal.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collectors.transcript import Turn


@dataclass
class Node:
    uuid: str
    parent: str | None
    index: int
    ts: str
    sidechain: bool
    turn: Turn | None  # None: a link that is dropped but keeps the chain together


def _kept_parents(nodes: dict[str, Node], skipped: Counter[str]) -> dict[str, str | None]:
    """Each kept node's nearest kept ancestor (None: a root, including dangling parents)."""
    memo: dict[str, str | None] = {}
    for node in nodes.values():
        if node.turn is None:
            continue
        walked: list[str] = []
        seen = {node.uuid}
        target = node.parent
        while target is not None:
            above = nodes.get(target)
            if above is None or target in seen:
                skipped["dangling_parent" if above is None else "parent_cycle"] += 1
                target = None
                break
            if above.turn is not None:
                break
            if target in memo:
                target = memo[target]
                break
            walked.append(target)
            seen.add(target)
            target = above.parent
        for uuid in walked:
            memo[uuid] = target
        memo[node.uuid] = target
    return {u: memo[u] for u, n in nodes.items() if n.turn is not None}


def thread(nodes: dict[str, Node], skipped: Counter[str]) -> list[tuple[Node, list[Turn]]]:
    """Per root (in file order): the kept turns on the path to its newest leaf, tree-ordered."""
    parents = _kept_parents(nodes, skipped)
    children: dict[str, list[Node]] = defaultdict(list)
    roots: list[Node] = []
    for uuid, parent in parents.items():
        (children[parent] if parent is not None else roots).append(nodes[uuid])
    for kids in children.values():
        kids.sort(key=lambda n: n.index)
    trees = []
    for root in sorted(roots, key=lambda n: n.index):
        members, stack = [], [root]
        while stack:
            node = stack.pop()
            members.append(node)
            stack.extend(children[node.uuid])
        leaf = max((m for m in members if not children[m.uuid]), key=lambda m: (m.ts, m.index))
        on_path = {leaf.uuid}
        cursor = parents[leaf.uuid]
        while cursor is not None:
            on_path.add(cursor)
            cursor = parents[cursor]
        keep = _with_parallel_forks(on_path, nodes, children)
        if abandoned := len(members) - len(keep):
            skipped["abandoned_branch"] += abandoned
        order, stack = [], [root]
        while stack:
            node = stack.pop()
            assert node.turn is not None
            order.append(node.turn)
            kids = [c for c in children[node.uuid] if c.uuid in keep]
            # Side forks (parallel tool calls) first, so the main line continues after them.
            kids.sort(key=lambda c: (c.uuid in on_path, c.index))
            stack.extend(reversed(kids))
        trees.append((root, order))
    return trees


def _with_parallel_forks(
    on_path: set[str], nodes: dict[str, Node], children: dict[str, list[Node]]
) -> set[str]:
    """Add off-path parallel tool-call forks: more lines of a path message, and tool results.

    A rewind starts its branch with a new user prompt or a new message, so it is never re-added.
    """
    message_ids = {n.turn.message_id for u in on_path if (n := nodes[u]).turn and n.turn.message_id}
    keep = set(on_path)
    stack = list(on_path)
    while stack:
        for child in children[stack.pop()]:
            turn = child.turn
            if child.uuid in keep or turn is None:
                continue
            if turn.role == "tool" or (turn.role == "assistant" and turn.message_id in message_ids):
                keep.add(child.uuid)
                stack.append(child.uuid)
    return keep
