"""Video and image files for the command line: write .mp4 (or .avi) clips and .png pictures, read clips back.

This project's own thin layer over OpenCV (`cv2.VideoWriter` with the MPEG-4 Part 2 `mp4v` codec,
which every opencv-python wheel can write without ffmpeg licensing extras; Motion-JPEG in .avi as
the fallback; `cv2.imwrite` for PNG). Frames are RGB here and converted to OpenCV's BGR at the
boundary. A 64x64 clip of the tiny world is too small to look at, so `write_video` can enlarge it
by an integer factor with nearest-neighbour sampling (every pixel becomes a `scale` x `scale`
block, no blur). Lossy codecs change pixel values; keep the plan JSON, not the video, as the record.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import torch

__all__ = ["to_uint8", "upscale", "write_video", "write_png", "read_video", "image_tensor"]


def to_uint8(frames) -> np.ndarray:
    """uint8 as is, floats in [0, 1] scaled by 255 and rounded; a numpy array or torch tensor, any shape."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().to("cpu").numpy()
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {frames.dtype}; convert them first")
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def video_to_frames(video: torch.Tensor) -> np.ndarray:
    """A VAE's video `[B, 3, T, H, W]` in [-1, 1] -> uint8 frames `[B, T, H, W, 3]` (clamped, rounded)."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy()


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(
            f"a video must be frames [T, H, W, 3] (RGB, channels last) with T >= 1, got shape "
            f"{list(frames.shape)}; move the channel axis last (e.g. .permute(1, 2, 3, 0) of a "
            f"[3, T, H, W] video)"
        )


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement of `[..., H, W, C]` by an integer factor -> `[..., H * s, W * s, C]`."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    if scale == 1:
        return frames
    return frames.repeat(scale, axis=-3).repeat(scale, axis=-2)  # [..., H*s, W*s, C]


def _open_writer(path: Path, fourcc: str, fps: float, size: tuple[int, int]) -> cv2.VideoWriter | None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), size)
    if writer.isOpened():
        return writer
    writer.release()
    return None


def _writer_for(path: Path, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter, Path]:
    """An open writer for `path` (mp4v for .mp4, MJPG for .avi); an .mp4 that cannot be opened falls back to .avi."""
    fourcc = "MJPG" if path.suffix.lower() == ".avi" else "mp4v"
    writer = _open_writer(path, fourcc, fps, size)
    if writer is not None:
        return writer, path
    fallback = path.with_suffix(".avi")
    if fourcc == "mp4v":
        writer = _open_writer(fallback, "MJPG", fps, size)
        if writer is not None:
            print(
                f"warning: OpenCV cannot write {path.name} with the mp4v codec on this machine; wrote "
                f"{fallback.name} (Motion-JPEG) instead. Install opencv-python-headless from PyPI for mp4 "
                f"support.",
                file=sys.stderr,
            )
            return writer, fallback
    raise OSError(
        f"OpenCV cannot open a video writer for {path} (tried {fourcc}"
        f"{' and MJPG .avi' if fourcc == 'mp4v' else ''}); check that the folder is writable and that "
        f"opencv-python-headless is installed with its bundled video backend"
    )


def write_video(frames, path, fps: float, scale: int = 1) -> Path:
    """Write RGB frames `[T, H, W, 3]` (uint8, or float in [0, 1]) as a video; returns the path written.

    `.mp4` uses the mp4v codec and falls back to `.avi` (MJPG) with a warning when this OpenCV
    build cannot write mp4; `.avi` is written as MJPG directly. `scale` enlarges every frame by
    that integer factor with nearest-neighbour sampling.
    """
    if not fps or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    frames = to_uint8(frames)
    _check_frames(frames)
    big = upscale(frames, scale)  # [T, H*s, W*s, 3]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer, written = _writer_for(path, fps, (big.shape[2], big.shape[1]))
    try:
        for frame in big:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))  # RGB -> BGR [H, W, 3]
    finally:
        writer.release()
    return written


def write_png(image, path) -> Path:
    """Write one RGB image `[H, W, 3]` (uint8, or float in [0, 1]; numpy or torch) as PNG."""
    image = to_uint8(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"a picture must be [H, W, 3] RGB, got shape {list(image.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1])):  # RGB -> BGR
        raise OSError(f"OpenCV could not write {path}; check the folder is writable and the name ends in .png")
    return path


def read_image(path) -> np.ndarray:
    """An image file as RGB uint8 `[H, W, 3]`; ValueError naming the file when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))  # [H, W, 3]
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{path}: cannot read the image ({err}); pass a PNG or JPEG file") from None


def image_tensor(image, height: int, width: int, model: str) -> torch.Tensor:
    """An image `[H, W, 3]` (uint8, or float in [0, 1]) as `[1, 3, H, W]` float in [0, 1]; ValueError naming
    `model` when it is not an RGB image of `height` x `width`."""
    if isinstance(image, torch.Tensor):
        unit = image.detach().to("cpu", copy=True)
    else:
        unit = torch.from_numpy(np.array(image))  # a copy: read-only arrays are fine
    unit = unit.float() / 255 if unit.dtype == torch.uint8 else unit.float()  # [H, W, 3] in [0, 1]
    if tuple(unit.shape) != (height, width, 3):
        raise ValueError(
            f"the first frame is {tuple(unit.shape)} but {model!r} renders {height}x{width} RGB frames; "
            f"resize the image to {width}x{height}"
        )
    return unit.permute(2, 0, 1)[None]  # [1, 3, H, W]


def read_video(path) -> tuple[np.ndarray, float]:
    """Frames `[T, H, W, 3]` uint8 RGB and the frame rate of a video file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise OSError(f"OpenCV cannot open {path}; is it a video file this OpenCV build can decode?")
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        frames = []
        while True:
            ok, frame = capture.read()  # [H, W, 3] BGR
            if not ok:
                break
            frames.append(frame[..., ::-1])
    finally:
        capture.release()
    if not frames:
        raise OSError(f"{path}: no frames could be decoded; the file is empty or damaged")
    return np.ascontiguousarray(np.stack(frames)), fps  # [T, H, W, 3]
