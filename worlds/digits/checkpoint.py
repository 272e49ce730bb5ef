"""Write a diffusers StableDiffusionPipeline as an A1111-style single-file checkpoint (SD 1.x key layout).

The key names are those of the original latent-diffusion code, which diffusers' `from_single_file` and the
usual UIs read: `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE),
`cond_stage_model.transformer.*` (CLIP text encoder). The mapping generalises diffusers' own
scripts/convert_diffusers_to_original_stable_diffusion.py to any number of levels and layers per block.
"""

from pathlib import Path

import torch

from node.core.files import atomic_write_bytes


def _unet_prefix_map(config) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs for a UNet2DConditionModel config."""
    layers = config.layers_per_block
    levels = len(config.block_out_channels)
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for i in range(levels):
        down_attn = config.down_block_types[i].startswith("CrossAttn")
        up_attn = config.up_block_types[i].startswith("CrossAttn")
        for j in range(layers):
            block = (layers + 1) * i + j + 1
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{block}.0."))
            if down_attn:
                pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{block}.1."))
        if i < levels - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(layers + 1) * (i + 1)}.0.op."))
        for j in range(layers + 1):
            block = (layers + 1) * i + j
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{block}.0."))
            if up_attn:
                pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{block}.1."))
        if i < levels - 1:
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(layers + 1) * i + layers}.{2 if up_attn else 1}."))
    return pairs


_RESNET_PARTS = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
]


def unet_to_ldm(state_dict: dict, config) -> dict:
    """UNet weights under LDM names (without the `model.diffusion_model.` prefix)."""
    pairs = sorted(_unet_prefix_map(config), key=lambda p: -len(p[0]))
    out = {}
    for key, value in state_dict.items():
        for hf, sd in pairs:
            if key.startswith(hf):
                rest = key[len(hf):]
                if ".resnets." in hf or hf.startswith("mid_block.resnets"):
                    for hf_part, sd_part in _RESNET_PARTS:
                        if rest.startswith(hf_part):
                            rest = sd_part + rest[len(hf_part):]
                            break
                out[sd + rest] = value
                break
        else:
            raise KeyError(f"no LDM name for UNet weight {key}")
    return out


def _vae_prefix_map(config) -> list[tuple[str, str]]:
    levels = len(config.block_out_channels)
    layers = config.layers_per_block
    pairs = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2."),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."),
        ]
    for i in range(levels):
        for j in range(layers):
            pairs.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
        if i < levels - 1:
            pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
            pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample."))
        for j in range(layers + 1):
            pairs.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{levels - 1 - i}.block.{j}."))
    return pairs


_VAE_ATTENTION_PARTS = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]


def vae_to_ldm(state_dict: dict, config) -> dict:
    """VAE weights under LDM names (without the `first_stage_model.` prefix); attention projections as 1x1 convs."""
    pairs = sorted(_vae_prefix_map(config), key=lambda p: -len(p[0]))
    out = {}
    for key, value in state_dict.items():
        new = key
        for hf, sd in pairs:
            if key.startswith(hf):
                rest = key[len(hf):]
                if ".attentions." in hf:
                    for hf_part, sd_part in _VAE_ATTENTION_PARTS:
                        if rest.startswith(hf_part):
                            rest = sd_part + rest[len(hf_part):]
                            if sd_part != "norm." and rest.endswith("weight") and value.ndim == 2:
                                value = value[:, :, None, None]
                            break
                new = sd + rest.replace("conv_shortcut.", "nin_shortcut.")
                break
        out[new] = value
    return out


def pipeline_state_dict(unet, vae, text_encoder, dtype=torch.float16) -> dict:
    """The whole pipeline's weights under A1111/LDM names, as contiguous tensors of `dtype`."""
    sd = {}
    for key, value in unet_to_ldm(unet.state_dict(), unet.config).items():
        sd["model.diffusion_model." + key] = value
    for key, value in vae_to_ldm(vae.state_dict(), vae.config).items():
        sd["first_stage_model." + key] = value
    for key, value in text_encoder.state_dict().items():
        # SD 1.x files hold the CLIPTextModel's keys with their `text_model.` prefix, which transformers 5 drops.
        if not key.startswith("text_model."):
            key = "text_model." + key
        sd["cond_stage_model.transformer." + key] = value
    return {k: v.detach().to(dtype).contiguous().clone() for k, v in sd.items()}


def write_single_file(path: Path, unet, vae, text_encoder, metadata: dict[str, str], dtype=torch.float16) -> Path:
    """Write the pipeline as one safetensors file with `metadata` in its `__metadata__`, atomically."""
    from safetensors.torch import save

    tensors = pipeline_state_dict(unet, vae, text_encoder, dtype)
    atomic_write_bytes(Path(path), save(tensors, metadata={"format": "pt", **metadata}))
    return Path(path)
