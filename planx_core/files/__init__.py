"""Files, independent of any model: safetensors reading and writing, and video/image files.

`safetensors`: header checks that name the file and the fix, shard folders and indexes,
per-tensor casting while reading, fp8-scaled folding, `save_safetensors`, `check_keys`, and the
one error type of every model-file boundary, `CheckpointError`. `paths`: names confined to their
folder (`within`, `plain_entry`). `atomic`: outputs renamed into place only when complete
(`write_text_atomic`). `video`: frames to mp4/avi/png
and back (OpenCV). Nothing here imports a model.
"""

from .atomic import write_text as write_text_atomic
from .paths import plain_entry, within
from .safetensors import (
    FLOAT8_DTYPES,
    LORA_KEY,
    CheckpointError,
    PathLike,
    cast_tensor,
    check_keys,
    check_safetensors_header,
    fold_fp8_scales,
    read_safetensors,
    resolve_shards,
    save_safetensors,
)
from .video import (
    read_image,
    read_video,
    to_uint8,
    upscale,
    video_to_frames,
    write_png,
    write_video,
)

__all__ = [
    "FLOAT8_DTYPES",
    "LORA_KEY",
    "CheckpointError",
    "PathLike",
    "cast_tensor",
    "check_keys",
    "check_safetensors_header",
    "fold_fp8_scales",
    "plain_entry",
    "read_image",
    "read_safetensors",
    "read_video",
    "resolve_shards",
    "save_safetensors",
    "to_uint8",
    "upscale",
    "video_to_frames",
    "write_png",
    "write_text_atomic",
    "write_video",
    "within",
]
