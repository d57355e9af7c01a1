"""The fixed graph as Graphviz DOT, changed and new nodes highlighted: `--dot FILE`.

Drawing the graph shares nothing with writing the `fix -o` folder but the report it reads,
so it is a module of its own that `fxgrad.export` re-exports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from torch import fx

from fxgrad.report import Report


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _names_in(code: str) -> set[str]:
    names = set(re.findall(r"^\s*(\w+)\s*=", code, flags=re.M))
    sig = re.search(r"def forward\(self,?([^)]*)\)", code)
    if sig:
        names.update(p.split(":")[0].split("=")[0].strip() for p in sig.group(1).split(","))
    return names


def graph_to_dot(gm: fx.GraphModule, report: Report) -> str:
    """Graphviz DOT text of the graph; changed and new nodes are highlighted."""
    changed: dict[str, list[str]] = {}
    for c in report.applied:
        assigned = re.match(r"\s*(\w+)\s*=", c.after)  # `mul = sigmoid.mul(2)` names the new node
        for name in {c.node, assigned.group(1) if assigned else c.node}:
            changed.setdefault(name, []).append(c.code)
    before = _names_in(report.code_before)
    lines = [
        f"digraph {_dot_quote(report.model or 'model')} {{",
        "  node [shape=box, fontname=monospace, fontsize=10];",
    ]
    for node in gm.graph.nodes:
        target = (
            node.target
            if isinstance(node.target, str)
            else fx.node._get_qualified_name(node.target)
        )
        label = node.name if node.op == "output" else f"{node.name}\n{node.op} {target}"
        attrs = []
        if node.name in changed:
            label += "\n" + ", ".join(changed[node.name])
            attrs.append('style=filled, fillcolor="#ffd27f"')
        elif before and node.name not in before and node.op not in ("placeholder", "output"):
            label += "\n(new)"
            attrs.append('style=filled, fillcolor="#b6e3b6"')
        extra = (", " + ", ".join(attrs)) if attrs else ""
        lines.append(f"  {_dot_quote(node.name)} [label={_dot_quote(label)}{extra}];")
    for node in gm.graph.nodes:
        for arg in node.all_input_nodes:
            lines.append(f"  {_dot_quote(arg.name)} -> {_dot_quote(node.name)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(path: str, gm: fx.GraphModule, report: Report) -> None:
    """Write the DOT file, and an SVG beside it when Graphviz's `dot` is on the PATH."""
    Path(path).write_text(graph_to_dot(gm, report))
    dot = shutil.which("dot")
    if dot is None:
        print(f"wrote {path} (install Graphviz for an SVG)", file=sys.stderr)
        return
    svg = str(Path(path).with_suffix(".svg"))
    done = subprocess.run([dot, "-Tsvg", path, "-o", svg], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"wrote {path}; dot failed: {done.stderr.strip()}", file=sys.stderr)
    else:
        print(f"wrote {path} and {svg}", file=sys.stderr)
