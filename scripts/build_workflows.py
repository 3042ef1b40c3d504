"""Write the example workflows, workflows/*.json, in ComfyUI's UI (frontend) format, version 0.4.

Every workflow runs as shipped on the embedded tiny model on a CPU and ends in a playable video (ComfyUI's
own Create Video and Save Video nodes, an H.264 MP4) beside its frames. Its `extra.planx.real_weights` block
says how to turn it into the Wan 2.2 TI2V 5B version (the SemanticGen long-video workflow has none:
`available` is false and `summary` says why). The files are named by their titles (the Templates browser
shows the file name) and laid out to fit one 1600x1000 screen at the shipped zoom (`extra.ds`); nodes never
overlap, with room for what they show after a run. Widget values are ordered by the nodes' real schemas,
read from a ComfyUI checkout (COMFYUI_PATH, else ~/ComfyUI) in CPU mode:

    .venv/bin/python scripts/build_workflows.py [--check]

--check compares instead of writing (exit 1 when a file is stale). The graphs themselves are in
`workflow_graphs.py`; the thumbnails beside them (`<title>.jpg`) come from `workflow_thumbnails.py`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from enum import Enum
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
TITLE_HEIGHT = 30  # LiteGraph's node title bar, drawn above a node's pos
SCALE = 0.75  # the shipped zoom: the editor's 16 px text shows at 12 px
SCREEN = (1536, 922)  # the canvas of a 1600x1000 window in the ComfyUI frontend (its sidebar and menu bar off)
MARGIN = 16  # screen pixels kept free around the graph


# ----------------------------------------------------------------------------- schemas


def load_schemas() -> dict:
    """NODE_CLASS_MAPPINGS of stock ComfyUI (its extra nodes included) plus this pack, imported from a checkout
    in CPU mode."""
    comfy = next(
        (
            Path(p)
            for p in (os.environ.get("COMFYUI_PATH"), str(Path.home() / "ComfyUI"))
            if p and (Path(p) / "comfy").is_dir()
        ),
        None,
    )
    if comfy is None:
        sys.exit("no ComfyUI checkout: set COMFYUI_PATH or put one at ~/ComfyUI")
    sys.path.insert(0, str(comfy))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (after args.cpu)

    import nodes as comfy_nodes

    video = importlib.import_module("comfy_extras.nodes_video")
    spec = importlib.util.spec_from_file_location(
        "planx_pack", REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    pack = importlib.util.module_from_spec(spec)
    sys.modules["planx_pack"] = pack
    spec.loader.exec_module(pack)
    extras = {n.define_schema().node_id: n for n in (video.CreateVideo, video.SaveVideo)}
    return {**comfy_nodes.NODE_CLASS_MAPPINGS, **extras, **pack.NODE_CLASS_MAPPINGS}


def _name(t) -> str | list:
    return t.value if isinstance(t, Enum) else t


def is_widget(spec) -> bool:
    return isinstance(spec[0], list) or _name(spec[0]) in WIDGET_TYPES


def default_of(spec):
    kind, opts = _name(spec[0]), (spec[1] if len(spec) > 1 else {})
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list):
        return kind[0] if kind else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind, (opts.get("options") or [""])[0])


# ----------------------------------------------------------------------------- graph


class Graph:
    """A UI workflow under construction: nodes at given places (x, y of the title bar's top-left, width, height
    of the whole node, title included), links by output slot."""

    def __init__(self, schemas: dict):
        self.schemas = schemas
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(
        self,
        type_: str,
        at: tuple[int, int, int, int],
        *,
        title: str | None = None,
        inputs: dict | None = None,
        **widgets,
    ) -> dict:
        """A node with `inputs` {name: (node, slot)} linked and `widgets` overriding the schema's defaults."""
        cls = self.schemas[type_]
        spec = cls.INPUT_TYPES()
        sockets, values = [], []
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                if is_widget(entry):
                    values.append(widgets.pop(name) if name in widgets else default_of(entry))
                    if (entry[1] if len(entry) > 1 else {}).get("control_after_generate"):
                        values.append("fixed")  # the frontend's control widget after a seed
                else:
                    socket = {"name": name, "type": _name(entry[0]), "link": None}
                    if section == "optional":
                        socket["shape"] = 7  # the frontend's hollow dot for optional inputs
                    sockets.append(socket)
        if widgets:
            raise KeyError(f"{type_} has no widget {sorted(widgets)}")
        if type_ == "LoadImage":
            values.append("image")  # the upload button's value, as the frontend saves it
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        outputs = [
            {"name": _name(n), "type": _name(t), "links": [], "slot_index": i}
            for i, (t, n) in enumerate(zip(cls.RETURN_TYPES, names))
        ]
        x, y, width, height = at
        node = {
            "id": len(self.nodes) + 1,
            "type": type_,
            "pos": [x, y + TITLE_HEIGHT],
            "size": [width, height - TITLE_HEIGHT],
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": sockets,
            "outputs": outputs,
            "properties": {"Node name for S&R": type_},
            "widgets_values": values,
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        for name, (source, slot) in (inputs or {}).items():
            self.link(source, slot, node, name)
        return node

    def link(self, source: dict, slot: int, target: dict, name: str) -> None:
        """Link an output to an input socket, or to a widget (which then shows as a linked input)."""
        socket = next((s for s in target["inputs"] if s["name"] == name), None)
        out = source["outputs"][slot]
        if socket is None:  # a widget fed by a link, as the frontend saves it
            socket = {"name": name, "type": out["type"], "widget": {"name": name}, "link": None}
            target["inputs"].append(socket)
        if out["type"] != socket["type"]:
            raise TypeError(
                f"{source['type']}.{out['name']} ({out['type']}) -> {target['type']}.{name} ({socket['type']})"
            )
        link_id = len(self.links) + 1
        self.links.append([link_id, source["id"], slot, target["id"], target["inputs"].index(socket), out["type"]])
        socket["link"] = link_id
        out["links"].append(link_id)

    def boxes(self) -> dict[int, tuple[float, float, float, float]]:
        """Each node's box (x0, y0, x1, y1) in canvas units, title bar included."""
        return {
            n["id"]: (n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
            for n in self.nodes
        }

    def check_layout(self, name: str) -> None:
        """No two nodes overlap (10 units apart at least), and all fit the screen at the shipped zoom."""
        boxes = self.boxes()
        for a, ba in boxes.items():
            for b, bb in boxes.items():
                if a < b and not (
                    ba[2] + 10 <= bb[0] or bb[2] + 10 <= ba[0] or ba[3] + 10 <= bb[1] or bb[3] + 10 <= ba[1]
                ):
                    raise ValueError(f"{name}: nodes {a} and {b} overlap: {ba} {bb}")
        width = max(b[2] for b in boxes.values()) - min(b[0] for b in boxes.values())
        height = max(b[3] for b in boxes.values()) - min(b[1] for b in boxes.values())
        room = ((SCREEN[0] - 2 * MARGIN) / SCALE, (SCREEN[1] - 2 * MARGIN) / SCALE)
        if width > room[0] or height > room[1]:
            raise ValueError(f"{name}: the graph is {width}x{height} units; at zoom {SCALE} the screen holds {room}")

    def workflow(self, name: str, real_weights: dict) -> dict:
        self.check_layout(name)
        ranked = sorted(self.nodes, key=lambda n: (self._rank(n), n["id"]))
        for order, node in enumerate(ranked):  # the frontend's execution order
            node["order"] = order
        for out in (o for n in self.nodes for o in n["outputs"]):
            out["links"] = out["links"] or None
        left = min(b[0] for b in self.boxes().values())
        top = min(b[1] for b in self.boxes().values())
        offset = [MARGIN / SCALE - left, MARGIN / SCALE - top]
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": SCALE, "offset": offset}, "planx": {"real_weights": real_weights}},
            "version": 0.4,
        }

    def _rank(self, node: dict) -> int:
        by_id = {n["id"]: n for n in self.nodes}
        parents = [by_id[link[1]] for link in self.links if link[3] == node["id"]]
        return max((self._rank(p) + 1 for p in parents), default=0)


def main() -> int:
    from workflow_graphs import WORKFLOWS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    check = parser.parse_args().check
    schemas = load_schemas()
    stale = []
    for name, build in WORKFLOWS.items():
        text = json.dumps(build(Graph(schemas), name), indent=2) + "\n"
        path = OUT / name
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO)}")
    known = set(WORKFLOWS) | {"README.md"} | {Path(n).with_suffix(".jpg").name for n in WORKFLOWS}
    strays = sorted(p.name for p in OUT.iterdir() if p.name not in known)
    if strays:
        print(f"not written by this script: {', '.join(strays)}", file=sys.stderr)
    if stale:
        print(f"stale: {', '.join(stale)}; run scripts/build_workflows.py", file=sys.stderr)
    return 1 if stale or strays else 0


if __name__ == "__main__":
    sys.exit(main())
