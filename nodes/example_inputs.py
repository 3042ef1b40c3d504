"""Example inputs the shipped workflows load: copied into ComfyUI's input folder when missing.

`workflows/Plan-X image to video.json` loads `planx_red_circle.png` with the stock Load Image node,
which only lists files in the input folder. A file already there is never overwritten.
"""

from __future__ import annotations

import logging
import os
import shutil

import folder_paths

from planx_core import EMBEDDED

EXAMPLES = {"planx_red_circle.png": EMBEDDED / "examples" / "red_circle.png"}


def install_example_inputs() -> list[str]:
    """Copy the example images that are absent into the input folder; returns the names copied."""
    folder = folder_paths.get_input_directory()
    copied = []
    for name, source in EXAMPLES.items():
        target = os.path.join(folder, name)
        if os.path.exists(target) or not source.is_file():
            continue
        try:
            os.makedirs(folder, exist_ok=True)
            shutil.copyfile(source, target)
            copied.append(name)
        except OSError as err:  # a read-only input folder must not stop the pack from loading
            logging.warning("Plan-X: could not copy the example input %s to %s: %s", name, folder, err)
    return copied
