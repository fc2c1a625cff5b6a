#!/usr/bin/env python3
"""Fails when the crate's modules import each other in a circle.

Reads every src/**/*.rs outside tests (files named tests.rs, `mod tests`
blocks and src/main.rs are skipped), takes each `crate::a::b` path outside
comments as an edge to the deepest module that exists as a file, and looks
for a cycle. A module's edges to its own submodules or parent are not
counted: a parent naming its rooms is not a circle. Prints the edges with
-v. Prints every knot (a set of modules that reach each other) with its
edges. Exits 1 on a knot not listed in contrib/module-cycles.known, or on a
listed one that is gone (so the list only shrinks); else 0.
"""
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
PATH = re.compile(r"\bcrate((?:::[a-z_][a-z0-9_]*)+)")


def module_of(file):
    parts = list(file.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def modules():
    found = {}
    for f in sorted(SRC.rglob("*.rs")):
        rel = f.relative_to(SRC)
        if rel.name in ("main.rs", "tests.rs") or rel.parts[0] == "bin":
            continue
        found[module_of(f)] = f
    return found


def code_of(text):
    """The text before a `#[cfg(test)] mod tests`, without // comments."""
    cut = re.search(r"#\[cfg\(test\)\]\s*mod tests", text)
    if cut:
        text = text[: cut.start()]
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def graph(mods):
    edges = {m: set() for m in mods}
    for m, f in mods.items():
        for hit in PATH.finditer(code_of(f.read_text())):
            parts = tuple(hit.group(1).strip(":").split("::"))
            target = ()
            for i in range(1, len(parts) + 1):
                if parts[:i] in mods:
                    target = parts[:i]
            if not target:
                continue
            related = target[: len(m)] == m or m[: len(target)] == target
            if not related:
                edges[m].add(target)
    return edges


def cycles(edges):
    """Every strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def name(m):
    return "::".join(m) or "crate"


def known_cycles():
    """contrib/module-cycles.known: one knot a line (its modules, any order)."""
    path = pathlib.Path(__file__).resolve().parent / "module-cycles.known"
    if not path.exists():
        return set()
    known = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].split()
        if line:
            known.add(frozenset(tuple(m.split("::")) for m in line))
    return known


def main():
    edges = graph(modules())
    if "-v" in sys.argv[1:]:
        for m in sorted(edges):
            if edges[m]:
                print(f"{name(m)} -> {', '.join(sorted(name(t) for t in edges[m]))}")
    found, known = cycles(edges), known_cycles()
    count = sum(len(t) for t in edges.values())
    bad = 0
    for comp in found:
        inside = ", ".join(
            f"{name(a)} -> {name(b)}" for a in sorted(comp) for b in sorted(edges[a]) if b in comp
        )
        tag = "known module cycle (listed in contrib/module-cycles.known)" if comp in known else "module cycle"
        bad += comp not in known
        print(f"{tag}: {' '.join(sorted(name(m) for m in comp))}: {inside}")
    for comp in known - set(found):
        bad += 1
        print(f"listed cycle no longer there, remove it from module-cycles.known: {' '.join(sorted(name(m) for m in comp))}")
    if bad:
        return 1
    if not found:
        print(f"no cycle among {len(edges)} modules ({count} edges over `crate::` paths)")
    else:
        print(f"no new cycle among {len(edges)} modules ({count} edges over `crate::` paths)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
