"""planx_core models under ComfyUI's model management, and the embedded tiny model as MODEL, CLIP and VAE.

Every planx_core module the pack runs outside sampling (planner, TA-Tok, the tiny text encoder and
VAE) sits in a `ModelPatcher`, so `comfy.model_management.load_models_gpu` moves it to the
accelerator, frees room for it, and offloads it again under memory pressure (docs/comfyui-host.md 5g).

The tiny DiT keeps Wan's key layout, but ComfyUI's detection derives heads as dim // 128 and a
256-wide time embedding (`model_detection`, the `head.modulation` branch), which the tiny model
does not have; so it is built here from ComfyUI's own Wan 2.2 model class with its real config,
with a latent format of its 16-channel VAE. Its text encoder and VAE are small stand-ins with the
methods the stock CLIPTextEncode and VAEDecode call.
"""

from __future__ import annotations

import comfy.latent_formats
import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models
import torch
from torch import nn

from planx_core.pipelines import Bundle, prompt_text, split_prompt
from planx_core.wan import comfyui_unet_config


class Holder(nn.Module):
    """A plain container for ModelPatcher (which sets `.device` on the module it manages)."""

    def __init__(self, **modules: nn.Module):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.device = None


def managed(**modules: nn.Module) -> comfy.model_patcher.ModelPatcher:
    """Modules in one ModelPatcher: loaded by ComfyUI onto its device, offloaded to its offload device."""
    return comfy.model_patcher.ModelPatcher(
        Holder(**modules), load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def load(patcher: comfy.model_patcher.ModelPatcher) -> torch.device:
    """Load through ComfyUI's model management; returns the device the modules now sit on."""
    mm.load_models_gpu([patcher])
    return patcher.load_device


def unload(patcher: comfy.model_patcher.ModelPatcher) -> None:
    """Move a patcher's modules back to the offload device and drop it from ComfyUI's loaded list."""
    for index in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[index]
        if loaded.model is patcher and loaded.model_unload():
            mm.current_loaded_models.pop(index)
    mm.soft_empty_cache()


# ----------------------------------------------------------------------------- the tiny model as MODEL


class TinyLatent(comfy.latent_formats.LatentFormat):
    """Latents of the embedded tiny VAE: 16 channels, 4x space and time, already normalised by the VAE."""

    latent_channels = 16
    latent_dimensions = 3
    spatial_factor = 4

    def __init__(self, rgb_factors=None, rgb_bias=None, channels: int = 16, spatial_factor: int = 4):
        self.latent_rgb_factors, self.latent_rgb_factors_bias = rgb_factors, rgb_bias
        self.latent_channels, self.spatial_factor = channels, spatial_factor


def tiny_unet_config(source) -> dict:
    """ComfyUI's Wan unet config of a planx_core DiT (or of a bundle's DiT)."""
    return comfyui_unet_config(getattr(source, "dit", source).config)


def wan_model(dit, latent_format: TinyLatent, shift: float) -> comfy.model_patcher.ModelPatcher:
    """A planx_core DiT as ComfyUI's native Wan 2.2 (TI2V) model: per-frame timesteps with a start image."""
    config = comfy.supported_models.WAN22_T2V(tiny_unet_config(dit))
    config.latent_format = latent_format
    config.sampling_settings = {"shift": float(shift)}
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "")
    model.load_model_weights({k: v.clone() for k, v in dit.state_dict().items()}, "")
    model = model.to(mm.unet_offload_device())
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def tiny_model(bundle: Bundle, latent_format: TinyLatent) -> comfy.model_patcher.ModelPatcher:
    """The bundle's DiT as ComfyUI's native Wan 2.2 (TI2V) model."""
    return wan_model(bundle.dit, latent_format, bundle.spec.sampling.shift)


# ----------------------------------------------------------------------------- CLIP and VAE stand-ins


class TinyClip:
    """The tiny umT5 behind ComfyUI's CLIP calls (tokenize, encode_from_tokens[_scheduled]).

    The prompt is normalised as the DiT was trained (`pipeline.prompt_text` of its scene/motion split);
    features are `[1, text_len, dim]`, zero past the prompt, so a prompt pair batches without repeats.
    """

    def __init__(self, source):
        """`source`: a bundle, or the text encoder itself (SemanticGen's)."""
        self.encoder = getattr(source, "text_encoder", source)
        self.patcher = managed(encoder=self.encoder)

    def clone(self):
        return self

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs):
        return {"planx_text": prompt_text(*split_prompt(text or ""))}

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        load(self.patcher)
        with torch.inference_mode():
            cond = self.encoder([tokens["planx_text"]]).float().cpu()  # [1, text_len, dim]
        if return_dict:
            return {"cond": cond, "pooled_output": None}
        return (cond, None) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict=None, show_pbar=True):
        return [[self.encode_from_tokens(tokens), dict(add_dict or {})]]


class TinyVae:
    """The tiny Wan-architecture VAE behind ComfyUI's VAE calls: decode(latent) -> IMAGE frames,
    encode(IMAGE frames) -> latent `[1, C, 1 + (T - 1) / 4, H / 4, W / 4]`."""

    def __init__(self, source):
        """`source`: a bundle, or the VAE itself (SemanticGen's)."""
        self.vae = getattr(source, "vae", source)
        self.patcher = managed(vae=self.vae)
        self.latent_channels = self.vae.config.z_dim
        self.latent_dim = 3

    def spacial_compression_decode(self) -> int:
        return self.vae.config.spatial_factor

    spacial_compression_encode = spacial_compression_decode

    def temporal_compression_decode(self) -> int:
        return self.vae.config.temporal_factor

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """`[B, C, F, h, w]` -> `[B, T, H, W, 3]` float in [0, 1]."""
        device = load(self.patcher)
        with torch.inference_mode():
            video = self.vae.decode(latent.to(device).float(), chunked=latent.shape[2] > 16)  # [B, 3, T, H, W]
        return ((video + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).cpu()  # [B, T, H, W, 3]

    def decode_tiled(self, latent, *args, **kwargs) -> torch.Tensor:
        return self.decode(latent)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """IMAGE frames `[T, H, W, 3]` in [0, 1] (T = 4n + 1, or 1) -> latent `[1, C, F, h, w]`."""
        device = load(self.patcher)
        video = pixels[..., :3].permute(3, 0, 1, 2)[None].to(device).float() * 2 - 1  # [1, 3, T, H, W]
        with torch.inference_mode():
            return self.vae.encode(video).cpu()


def fit_preview_factors(vae: TinyVae, size: int = 64) -> tuple[list[list[float]], list[float]]:
    """A linear map latent channels -> RGB in [-1, 1] for ComfyUI's latent2rgb previews, fitted by least
    squares on a few smooth random images encoded by the VAE itself."""
    gen = torch.Generator().manual_seed(0)
    images = torch.nn.functional.interpolate(
        torch.rand(6, 3, 4, 4, generator=gen), size=(size, size), mode="bilinear", align_corners=False
    )  # [6, 3, H, W]
    latents = torch.cat([vae.encode(img.permute(1, 2, 0)[None]) for img in images])  # [6, C, 1, h, w]
    h, w = latents.shape[-2:]
    target = torch.nn.functional.interpolate(images, size=(h, w), mode="area") * 2 - 1  # [6, 3, h, w]
    x = latents[:, :, 0].permute(0, 2, 3, 1).reshape(-1, latents.shape[1])  # [N, C]
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)  # [N, C + 1]
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)  # [N, 3]
    solution = torch.linalg.lstsq(x, y).solution  # [C + 1, 3]
    return solution[:-1].tolist(), solution[-1].tolist()


def _parts(dit, text_encoder, vae_module, shift: float, size: int):
    vae = TinyVae(vae_module)
    factors, bias = fit_preview_factors(vae, size)
    latent_format = TinyLatent(factors, bias, vae_module.config.z_dim, vae_module.config.spatial_factor)
    return wan_model(dit, latent_format, shift), TinyClip(text_encoder), vae


def tiny_parts(bundle: Bundle):
    """(MODEL, CLIP, VAE) of a loaded planx_core bundle, for ComfyUI's stock nodes."""
    return _parts(bundle.dit, bundle.text_encoder, bundle.vae, bundle.spec.sampling.shift, bundle.spec.video.width)


def semanticgen_parts(model):
    """(MODEL, CLIP, VAE) of a loaded `SemanticGen`: its stage-2 DiT (the latent generator, rendering with an
    in-context semantic plan), and the text encoder and VAE it was trained with."""
    return _parts(model.latent_dit, model.text, model.vae, model.spec.shift, model.spec.size)


__all__ = [
    "Holder",
    "TinyClip",
    "TinyLatent",
    "TinyVae",
    "load",
    "managed",
    "semanticgen_parts",
    "tiny_model",
    "tiny_parts",
    "unload",
    "wan_model",
]
