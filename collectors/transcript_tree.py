"""Thread a transcript's lines into conversation paths by their `parentUuid` links.

Every kept line becomes a `Node`; dropped lines (progress, system, meta) are kept as links (a
line's parent by its uuid) so the chain stays whole. `thread` skips those links, keeps per root
the path to the newest leaf (a rewind abandons the older branch) and re-attaches the parallel
tool-call forks that hang off that path, then orders the kept turns as the conversation read
them. Parents that are missing or form a cycle are counted, never fatal.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collectors.transcript_lines import Turn


class Node(msgspec.Struct, gc=False):
    """A kept line: its turn and where it sits in the tree."""

    uuid: str
    parent: str | None
    index: int
    ts: str
    sidechain: bool
    turn: Turn


def _kept_parents(
    nodes: dict[str, Node], links: dict[str, str | None], skipped: Counter[str]
) -> dict[str, str | None]:
    """Each kept node's nearest kept ancestor (None: a root, including dangling parents)."""
    memo: dict[str, str | None] = {}  # a link's nearest kept ancestor
    parents: dict[str, str | None] = {}
    for uuid, node in nodes.items():
        target = node.parent
        if target is None or (target in nodes and target != uuid):
            parents[uuid] = target  # the common case: no link in between
            continue
        walked: list[str] = []
        seen = {uuid}
        while target is not None:
            if target in nodes:
                if target in seen:
                    skipped["parent_cycle"] += 1
                    target = None
                break
            if target not in links or target in seen:
                skipped["dangling_parent" if target not in links else "parent_cycle"] += 1
                target = None
                break
            if target in memo:
                target = memo[target]
                break
            walked.append(target)
            seen.add(target)
            target = links[target]
        for link in walked:
            memo[link] = target
        parents[uuid] = target
    return parents


def thread(
    nodes: dict[str, Node], links: dict[str, str | None], skipped: Counter[str]
) -> list[tuple[Node, list[Turn]]]:
    """Per root (in file order): the kept turns on the path to its newest leaf, tree-ordered.

    Args:
        nodes: The kept lines by uuid, in file order.
        links: Each dropped line's parent by its uuid: they keep the chain together.
        skipped: Receives counts for `dangling_parent`, `parent_cycle`, `abandoned_branch`.
    """
    parents = _kept_parents(nodes, links, skipped)
    # Nodes come in file order, so every child list and the roots are in file order already.
    children: dict[str, list[Node]] = {}
    roots: list[Node] = []
    for uuid, parent in parents.items():
        if parent is None:
            roots.append(nodes[uuid])
        elif (kids := children.get(parent)) is None:
            children[parent] = [nodes[uuid]]
        else:
            kids.append(nodes[uuid])
    trees = []
    for root in roots:
        leaf, walked, forks = _walk(root, children)
        if not forks:  # a plain chain (most trees): its one leaf's path is all of it
            trees.append((root, walked))
            continue
        on_path = {leaf.uuid}
        cursor = parents[leaf.uuid]
        while cursor is not None:
            on_path.add(cursor)
            cursor = parents[cursor]
        path_forks = [f for f in forks if f.uuid in on_path]
        keep = _with_parallel_forks(on_path, path_forks, nodes, children)
        if abandoned := len(walked) - len(keep):
            skipped["abandoned_branch"] += abandoned
        order: list[Turn] = []
        stack = [root]
        while stack:
            node = stack.pop()
            while True:  # down a chain without the stack
                order.append(node.turn)
                kids = children.get(node.uuid)
                if kids is None:
                    break
                if len(kids) == 1:
                    if kids[0].uuid not in keep:
                        break
                    node = kids[0]
                    continue
                kept = [c for c in kids if c.uuid in keep]
                if not kept:
                    break
                # Side forks (parallel tool calls) first, so the main line continues after them.
                kept.sort(key=lambda c: (c.uuid in on_path, c.index))
                stack.extend(reversed(kept[1:]))
                node = kept[0]
        trees.append((root, order))
    return trees


def _walk(root: Node, children: dict[str, list[Node]]) -> tuple[Node, list[Turn], list[Node]]:
    """One walk of the tree under `root`.

    Returns:
        Its newest leaf (latest timestamp, then latest line), its turns (in tree order when the
        tree is a chain), and its nodes with several children.
    """
    newest, key = root, ("", -1)
    turns: list[Turn] = []
    forks: list[Node] = []
    stack = [root]
    while stack:
        node = stack.pop()
        while True:  # down a chain without the stack
            turns.append(node.turn)
            kids = children.get(node.uuid)
            if kids is None:
                if (node.ts, node.index) > key:
                    newest, key = node, (node.ts, node.index)
                break
            if len(kids) > 1:
                forks.append(node)
                stack.extend(kids)
                break
            node = kids[0]
    return newest, turns, forks


def _with_parallel_forks(
    on_path: set[str],
    path_forks: list[Node],
    nodes: dict[str, Node],
    children: dict[str, list[Node]],
) -> set[str]:
    """Add off-path parallel tool-call forks: more lines of a path message, and tool results.

    A rewind starts its branch with a new user prompt or a new message, so it is never re-added.
    Only a path node with several children (`path_forks`) can have a child off the path.
    """
    if not path_forks:
        return on_path
    message_ids = {m for u in on_path if (m := nodes[u].turn.message_id)}
    keep = set(on_path)
    stack = [f.uuid for f in path_forks]
    while stack:
        for child in children.get(stack.pop(), ()):
            turn = child.turn
            if child.uuid in keep:
                continue
            if turn.role == "tool" or (turn.role == "assistant" and turn.message_id in message_ids):
                keep.add(child.uuid)
                stack.append(child.uuid)
    return keep
