"""SemanticGen's encoder: Qwen's pre-processing, the transformers tower, merged grids, files and keyframes.

The reference for pre-processing is transformers' own Qwen2-VL image processor (the PIL / numpy
one); the reference for features is transformers' `Qwen2_5_VisionTransformerPretrainedModel`
called on that processor's output. Checkpoint folders are written by a tiny
`Qwen2_5_VLForConditionalGeneration.save_pretrained` (sharded, with an index). All weights are
random; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from planx_core.files.safetensors import CheckpointError, save_safetensors
from planx_core.plan.timing import keyframe_times
from planx_core.semanticgen.encoder import (
    MAX_PIXELS,
    MIN_PIXELS,
    SemanticEncoder,
    qwen2_5_vl_3b_vision_config,
    semantic_keyframe_indices,
    semantic_keyframes,
    smart_resize,
    tiny_vision_config,
    vision_config,
)
from planx_core.semanticgen.encoder_files import load_semantic_encoder, save_semantic_encoder

TINY_VISION = dict(
    depth=2,
    hidden_size=64,
    num_heads=2,
    intermediate_size=128,
    out_hidden_size=128,
    patch_size=8,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=32,
    fullatt_block_indexes=[1],
)


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


@pytest.fixture(scope="module")
def encoder() -> SemanticEncoder:
    torch.manual_seed(0)
    return SemanticEncoder(tiny_vision_config()).eval()


def qwen_processor(**kwargs):
    """transformers' slow (PIL / numpy) Qwen2-VL image processor, with Qwen2.5-VL's released pixel limits."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil as Processor,
        )
    except ImportError:  # transformers < 5: the slow processor has the plain name
        from transformers import Qwen2VLImageProcessor as Processor
    return Processor(size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}, **kwargs)


def random_images(count: int, height: int, width: int, seed: int = 0, smooth: bool = False) -> list[np.ndarray]:
    rs = np.random.RandomState(seed)
    if not smooth:
        return [rs.randint(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]
    from PIL import Image

    small = [rs.randint(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8) for _ in range(count)]
    return [np.array(Image.fromarray(s).resize((width, height), Image.BILINEAR)) for s in small]


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def merged_output(out) -> torch.Tensor:
    """The tower's merged features: `pooler_output` in transformers 5.x, the tensor itself in 4.5x."""
    return getattr(out, "pooler_output", out)


def to_frames(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HWC images -> float frames `[K, 3, H, W]` in [-1, 1]."""
    return torch.stack([torch.from_numpy(im).permute(2, 0, 1) for im in images]).float() / 255 * 2 - 1


# --------------------------------------------------------------------------- configs and shapes


def test_configs():
    real = qwen2_5_vl_3b_vision_config()
    assert (real.out_hidden_size, real.patch_size * real.spatial_merge_size, real.temporal_patch_size) == (2048, 28, 2)
    tiny = tiny_vision_config()
    assert (tiny.depth, tiny.hidden_size, tiny.num_heads, tiny.out_hidden_size) == (2, 64, 2, 128)
    with pytest.raises(ValueError, match="window_size"):
        vision_config(**{**TINY_VISION, "window_size": 8})
    with pytest.raises(ValueError, match="fullatt_block_indexes"):
        vision_config(**{**TINY_VISION, "fullatt_block_indexes": [2]})


@pytest.mark.parametrize("size, grid", [((64, 64), (4, 4)), ((64, 96), (4, 6)), ((50, 70), (3, 5))])
def test_encode_shapes(encoder, size, grid):
    out = encoder.encode(torch.rand(3, 3, *size) * 2 - 1)
    assert out.shape == (3, *grid, 128) and out.dtype == torch.float32
    assert encoder.target_size(*size) == (grid[0] * 16, grid[1] * 16)
    assert encoder.grid_for(*size) == grid


def test_bad_frames_refused(encoder):
    with pytest.raises(ValueError, match=r"\[K, 3, H, W\]"):
        encoder.encode(torch.rand(3, 64, 64, 3))


def test_smart_resize_matches_qwen():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import (
        smart_resize as reference,
    )

    for h, w in [(50, 70), (480, 832), (704, 1280), (1080, 1920), (20, 3000), (4000, 4000), (10, 10)]:
        try:
            expected = reference(h, w, 28, MIN_PIXELS, MAX_PIXELS)
        except ValueError:  # transformers 4.5x refuses a side under 28 px; 5.x (and we) resize it up
            assert transformers_major() < 5 and min(h, w) < 28
            continue
        assert smart_resize(h, w, 28) == expected


# --------------------------------------------------------------------------- parity with transformers


@pytest.mark.parametrize("patch, size", [(8, (64, 96)), (14, (56, 84))])
def test_preprocess_matches_qwen_processor(patch, size):
    """Exact where no resize is needed: same pixels, same patch order, same grid_thw."""
    config = vision_config(**{**TINY_VISION, "patch_size": patch, "window_size": 4 * patch})
    enc = SemanticEncoder(config)
    images = random_images(2, *size)
    ref = qwen_processor(patch_size=patch, merge_size=2, temporal_patch_size=2)(images=images, return_tensors="pt")
    pixels, grid = enc.preprocess(to_frames(images))
    assert torch.equal(grid, ref["image_grid_thw"].to(grid.dtype))
    torch.testing.assert_close(pixels, ref["pixel_values"].float(), atol=1e-6, rtol=0)


def test_preprocess_resize_close_to_qwen_processor(encoder):
    """A size that needs resizing (100x150 -> 112x144): same grid, pixels within bicubic differences."""
    images = random_images(1, 100, 150, smooth=True)
    ref = qwen_processor(patch_size=8, merge_size=2, temporal_patch_size=2)(images=images, return_tensors="pt")
    pixels, grid = encoder.preprocess(to_frames(images))
    assert torch.equal(grid, ref["image_grid_thw"].to(grid.dtype))
    diff = (pixels - ref["pixel_values"]).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.05


def test_encode_equals_transformers_tower(encoder):
    """Our encode == transformers' tower on transformers' processor output, reshaped to [K, gh, gw, out]."""
    images = random_images(3, 64, 96, seed=1)
    ref = qwen_processor(patch_size=8, merge_size=2, temporal_patch_size=2)(images=images, return_tensors="pt")
    with torch.no_grad():
        merged = merged_output(encoder.visual(ref["pixel_values"], grid_thw=ref["image_grid_thw"]))  # [3*4*6, 128]
    ours = encoder.encode(to_frames(images), batch_size=2)
    torch.testing.assert_close(ours, merged.reshape(3, 4, 6, 128), atol=1e-5, rtol=1e-5)
    alone = encoder.encode(to_frames(images[1:2]))  # keyframes do not see each other
    torch.testing.assert_close(alone[0], ours[1], atol=1e-5, rtol=1e-5)


def test_grid_order_is_spatial():
    """With no attention blocks a merged token sees only its own 16x16 cell: [k, i, j] is frame k, row i, col j."""
    torch.manual_seed(0)
    enc = SemanticEncoder(vision_config(**{**TINY_VISION, "depth": 0, "fullatt_block_indexes": []})).eval()
    frames = torch.rand(2, 3, 64, 96) * 2 - 1
    base = enc.encode(frames)
    frames[1, :, 16:32, 32:48] = -frames[1, :, 16:32, 32:48]  # cell (1, 2) of keyframe 1
    changed = (enc.encode(frames) - base).abs().amax(-1) > 1e-6  # [2, 4, 6]
    expected = torch.zeros(2, 4, 6, dtype=torch.bool)
    expected[1, 1, 2] = True
    assert torch.equal(changed, expected)


# --------------------------------------------------------------------------- files


def test_save_load_round_trip(encoder, tmp_path):
    path = tmp_path / "semantic_encoder.safetensors"
    save_semantic_encoder(encoder, path)
    loaded = load_semantic_encoder(path)
    frames = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(loaded.encode(frames), encoder.encode(frames))
    assert not any(p.requires_grad for p in loaded.parameters())
    half = load_semantic_encoder(path, dtype=torch.bfloat16)
    assert half.visual.patch_embed.proj.weight.dtype == torch.bfloat16
    torch.testing.assert_close(half.encode(frames), encoder.encode(frames), atol=0.1, rtol=0.1)


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    """(folder, vision tower) of a tiny Qwen2_5_VLForConditionalGeneration saved in 8 shards with an index."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=128,
        bos_token_id=0,
        eos_token_id=1,
        rope_parameters=rope,
    )
    if transformers_major() >= 5:
        config = Qwen2_5_VLConfig(vision_config=TINY_VISION, text_config=text)
    else:  # 4.5x: the text fields at the top level, the rotary settings under rope_scaling
        text["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 3, 3]}
        text["rope_theta"] = text.pop("rope_parameters")["rope_theta"]
        config = Qwen2_5_VLConfig(vision_config=dict(TINY_VISION), **text)
    torch.manual_seed(1)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    folder = tmp_path_factory.mktemp("qwen") / "tiny-qwen2.5-vl"
    model.save_pretrained(folder, max_shard_size="100KB")
    visual = model.model.visual if hasattr(model.model, "visual") else model.visual
    return folder, visual


def assert_same_tower(encoder: SemanticEncoder, visual) -> None:
    frames = torch.rand(2, 3, 64, 64) * 2 - 1
    pixels, grid = encoder.preprocess(frames)
    with torch.no_grad():
        expected = merged_output(visual(pixels, grid_thw=grid)).reshape(2, 4, 4, -1)
    torch.testing.assert_close(encoder.encode(frames), expected, atol=1e-5, rtol=1e-5)


def test_load_sharded_qwen_folder(qwen_folder):
    folder, visual = qwen_folder
    assert (folder / "model.safetensors.index.json").is_file() and len(list(folder.glob("*.safetensors"))) > 2
    enc = load_semantic_encoder(folder)
    assert enc.out_dim == 128
    assert_same_tower(enc, visual)
    assert_same_tower(load_semantic_encoder(folder / "model.safetensors.index.json"), visual)


def single_file_folder(qwen_folder, dest, prefix: str = "visual.", old_config: bool = False, drop=(), extra=None):
    """The tiny checkpoint as one model.safetensors, vision keys renamed to `prefix`, plus config.json."""
    from safetensors.torch import load_file

    folder, _ = qwen_folder
    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    state = {
        (prefix + k[len("visual.") :] if k.startswith("visual.") else k): v
        for k, v in state.items()
        if k[len("visual.") :] not in drop
    }
    state.update(extra or {})
    dest.mkdir()
    save_safetensors(state, dest / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    if old_config:  # the layout of Qwen/Qwen2.5-VL-3B-Instruct's config.json
        vision = config["vision_config"]
        vision["in_chans"] = vision.pop("in_channels")
        vision.pop("rope_parameters", None)  # absent from transformers 4.5x configs
        vision.update(spatial_patch_size=vision["patch_size"], model_type="qwen2_5_vl", torch_dtype="bfloat16")
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_load_model_visual_prefix_and_old_config(qwen_folder, tmp_path):
    folder = single_file_folder(qwen_folder, tmp_path / "q", prefix="model.visual.", old_config=True)
    enc = load_semantic_encoder(folder)
    assert_same_tower(enc, qwen_folder[1])
    assert_same_tower(load_semantic_encoder(folder / "model.safetensors"), qwen_folder[1])


def test_missing_and_unexpected_keys_refused(qwen_folder, tmp_path):
    missing = single_file_folder(qwen_folder, tmp_path / "m", drop=("blocks.1.attn.qkv.weight",))
    with pytest.raises(CheckpointError, match=r"missing keys: visual\.blocks\.1\.attn\.qkv\.weight"):
        load_semantic_encoder(missing)
    extra = single_file_folder(qwen_folder, tmp_path / "u", extra={"visual.blocks.2.norm1.weight": torch.ones(64)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: visual\.blocks\.2\.norm1\.weight"):
        load_semantic_encoder(extra)
    both = single_file_folder(qwen_folder, tmp_path / "b", extra={"model.visual.merger.ln_q.weight": torch.ones(64)})
    with pytest.raises(CheckpointError, match="duplicates"):
        load_semantic_encoder(both)


def test_truncated_and_foreign_files_refused(qwen_folder, encoder, tmp_path):
    folder, _ = qwen_folder
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    shard = broken / index["weight_map"]["visual.merger.mlp.0.weight"]
    shard.write_bytes(shard.read_bytes()[:-64])
    with pytest.raises(CheckpointError, match="truncated"):
        load_semantic_encoder(broken)
    shard.unlink()
    with pytest.raises(CheckpointError, match="not in"):
        load_semantic_encoder(broken)

    config = json.loads((folder / "config.json").read_text())
    for model_type, message in (("qwen2_vl", "Qwen2-VL checkpoint"), ("llama", "not a Qwen2.5-VL checkpoint")):
        other = single_file_folder(qwen_folder, tmp_path / model_type)
        (other / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
        with pytest.raises(CheckpointError, match=message):
            load_semantic_encoder(other)

    no_tower = tmp_path / "no_tower"
    no_tower.mkdir()
    save_safetensors({"blocks.0.self_attn.q.weight": torch.zeros(2, 2)}, no_tower / "model.safetensors")
    (no_tower / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="no vision-tower weights"):
        load_semantic_encoder(no_tower)

    lone = tmp_path / "lone" / "weights.safetensors"
    save_safetensors({"visual.merger.ln_q.weight": torch.ones(64)}, lone)
    with pytest.raises(CheckpointError, match="no Qwen2.5-VL vision config"):
        load_semantic_encoder(lone)
    pickle = tmp_path / "pickled.pth"
    torch.save(encoder.state_dict(), pickle)
    with pytest.raises(CheckpointError, match="not safetensors"):
        load_semantic_encoder(pickle)
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "config.json").write_text(json.dumps(config))
    shutil.copy(pickle, bin_folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_semantic_encoder(bin_folder)


# --------------------------------------------------------------------------- keyframes


@pytest.mark.parametrize(
    "num_frames, fps, expected",
    [
        (121, 24.0, [0, 12, 24, 36, 48, 60, 72, 84, 96, 108, 120]),
        (81, 16.0, [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80]),
        (100, 30.0, [0, 15, 30, 45, 60, 75, 90]),
        (1, 24.0, [0]),
    ],
)
def test_semantic_keyframe_indices(num_frames, fps, expected):
    assert semantic_keyframe_indices(num_frames, fps) == expected
    times, indices = semantic_keyframes(num_frames, fps)
    assert times == keyframe_times(num_frames, fps, 2.0) and indices == expected


def test_semantic_keyframes_below_rate_skip_repeats():
    times, indices = semantic_keyframes(5, 1.0)  # 1 fps video sampled at 2 fps
    assert indices == sorted(set(indices)) and indices[0] == 0 and indices[-1] == 4
    assert [min(round(t * 1.0), 4) for t in times] == indices
    assert semantic_keyframe_indices(121, 24.0, rate=1.0) == [0, 24, 48, 72, 96, 120]
