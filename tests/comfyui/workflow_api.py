"""UI workflow (frontend JSON, version 0.4) -> API prompt (what POST /prompt takes), using /object_info.

Per node: inputs are its links by input name, plus its widgets_values matched to the node's
widget inputs (INT, FLOAT, STRING, BOOLEAN, combos), required then optional, in the server's order.
The frontend saves one extra value after each input with `control_after_generate` (a seed's
"fixed"/"randomize"), which is skipped. Muted (mode 2) and bypassed (mode 4) nodes are left out;
our workflows have no notes, reroutes, primitives or groups-as-nodes, so those are not handled.
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SKIPPED_MODES = {2, 4}
_MISSING = object()


def is_widget(spec: list) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def widget_inputs(info: dict) -> list[tuple[str, dict]]:
    """(name, options) of a node type's widget inputs, in the order the frontend lays out its widgets."""
    out = []
    for section in ("required", "optional"):
        specs = info["input"].get(section, {})
        for name in info.get("input_order", {}).get(section, list(specs)):
            spec = specs[name]
            if is_widget(spec):
                out.append((name, spec[1] if len(spec) > 1 else {}))
    return out


def to_api(workflow: dict, object_info: dict) -> dict:
    """The API prompt {node id: {class_type, inputs}} of a UI workflow."""
    live = {n["id"]: n for n in workflow["nodes"] if n.get("mode", 0) not in SKIPPED_MODES}
    links = {link[0]: link for link in workflow["links"]}  # id -> [id, from_node, from_slot, to_node, to_slot, type]
    prompt = {}
    for node_id, node in live.items():
        if node["type"] not in object_info:
            raise KeyError(f"node {node_id}: type {node['type']!r} is not on the server (pack not loaded?)")
        inputs = {}
        values = iter(node.get("widgets_values") or [])
        for name, options in widget_inputs(object_info[node["type"]]):
            inputs[name] = next(values, _MISSING)  # linked widgets keep a value too; the link below wins
            if inputs[name] is _MISSING:
                raise ValueError(f"node {node_id} ({node['type']}): no widgets_values entry for {name!r}")
            if options.get("control_after_generate"):
                next(values, None)
        for socket in node.get("inputs", []):
            link = links.get(socket.get("link"))
            if link is not None and link[1] in live:
                inputs[socket["name"]] = [str(link[1]), link[2]]
        prompt[str(node_id)] = {
            "class_type": node["type"],
            "inputs": inputs,
            "_meta": {"title": node.get("title", node["type"])},
        }
    return prompt
