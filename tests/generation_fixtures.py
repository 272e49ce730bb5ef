"""Builders for generation tests: a tiny pipeline of the digits world's architecture with random weights,
written as an A1111-style single-file checkpoint with its diffusers config folder, and LoRAs for it
trained for a few steps with peft, saved in kohya and diffusers formats."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _tokenizer_files(folder: Path) -> None:
    """A CLIP tokenizer vocabulary of the byte-level characters plus whole digit words (as the digits
    world's tokenizer is built)."""
    from plugins.generation.clip_vocab import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in DIGIT_WORDS + ["digit", "handwritten", "number", "the", "a"]:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            if pieces[0] not in vocab:
                vocab.append(pieces[0])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 16, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))


def tiny_pipeline(seed: int = 0) -> Any:
    """A StableDiffusionPipeline of the digits world's architecture (16x16 images) with random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        _tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    vocab = len(tokenizer)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, projection_dim=64, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
                        latent_channels=4, norm_num_groups=32, sample_size=16)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D",) * 2,
                                up_block_types=("CrossAttnUpBlock2D",) * 2, cross_attention_dim=64,
                                attention_head_dim=8, norm_num_groups=32)
    scheduler = DDIMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing")
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _unet_to_ldm(state: dict[str, torch.Tensor], per_block: int, attention_blocks: set[int]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        new = None
        for old, ldm in _UNET_TOP.items():
            if key.startswith(old + "."):
                new = ldm + key[len(old):]
        if new is None and (m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)):
            b, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = b * (per_block + 1) + layer + 1
            new = f"input_blocks.{index}.{0 if kind == 'resnets' else 1}.{_resnet(rest) if kind == 'resnets' else rest}"
        elif new is None and (m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key)):
            new = f"input_blocks.{(int(m[1]) + 1) * (per_block + 1)}.0.op.{m[2]}"
        elif new is None and (m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)):
            index = 1 if m[1] == "attentions" else (0 if m[2] == "0" else 2)
            new = f"middle_block.{index}.{_resnet(m[3]) if m[1] == 'resnets' else m[3]}"
        elif new is None and (m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)):
            b, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = b * (per_block + 1) + layer
            new = f"output_blocks.{index}.{0 if kind == 'resnets' else 1}.{_resnet(rest) if kind == 'resnets' else rest}"
        elif new is None and (m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key)):
            b = int(m[1])
            index = b * (per_block + 1) + per_block
            new = f"output_blocks.{index}.{2 if b in attention_blocks else 1}.conv.{m[2]}"
        if new is None:
            raise AssertionError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = tensor
    return out


def _resnet(rest: str) -> str:
    for old, ldm in _RESNET:
        if rest.startswith(old + "."):
            return ldm + rest[len(old):]
    return rest


def _vae_to_ldm(state: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    out = {}
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for key, tensor in state.items():
        new = key
        if m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.*)", key):
            new = f"{m[1]}.norm_out.{m[2]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            new = f"decoder.up.{blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", key):
            new = f"{m[1]}.mid.attn_1.{attention[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and m[3] == "weight":
                tensor = tensor[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out["first_stage_model." + new] = tensor
    return out


def write_single_file(pipe: Any, path: Path) -> None:
    """Save `pipe` as an A1111-style (original Stable Diffusion layout) safetensors checkpoint."""
    from safetensors.torch import save_file

    unet_config = pipe.unet.config
    attention_up = {i for i, kind in enumerate(unet_config.up_block_types) if kind.startswith("CrossAttn")}
    state = _unet_to_ldm(pipe.unet.state_dict(), unet_config.layers_per_block, attention_up)
    state.update(_vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.down_block_types)))
    # The original layout nests CLIP under text_model (transformers 5.6+ flattened CLIPTextModel).
    state.update({"cond_stage_model.transformer." + (k if k.startswith("text_model.") else f"text_model.{k}"): v
                  for k, v in pipe.text_encoder.state_dict().items()})
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(path),
              metadata={"format": "pt", "atrium.test": "random weights, digits architecture"})


def write_config_folder(pipe: Any, folder: Path) -> Path:
    """The diffusers config folder (no weights) the single file loads with, as worlds/digits/model is."""
    pipe.save_pretrained(folder, safe_serialization=True)
    for weights in folder.rglob("*.safetensors"):
        weights.unlink()
    return folder


def lora_files(pipe: Any, folder: Path, *, seed: int = 1, steps: int = 3, rank: int = 4) -> tuple[Path, Path]:
    """Train a small LoRA on the pipeline's UNet for a few steps (so it is not zero) and save it twice:
    kohya format (lora_unet_..., as A1111 and ComfyUI share them) and diffusers format (unet....lora_A)."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    unet = pipe.unet
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]), adapter_name="fixture")
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    optimizer = torch.optim.AdamW(params, lr=5e-2)
    hidden = torch.randn(2, 16, unet.config.cross_attention_dim)
    for _ in range(steps):
        latents = torch.randn(2, 4, 8, 8)
        loss = (unet(latents, 10, encoder_hidden_states=hidden).sample - latents).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    state = get_peft_model_state_dict(unet, adapter_name="fixture")
    diffusers_state = {f"unet.{k}": v.detach().contiguous().clone()
                       for k, v in convert_state_dict_to_diffusers(state).items()}
    kohya_state = {k: v.detach().contiguous().clone() for k, v in
                   convert_state_dict_to_kohya({f"unet.{k}": v for k, v in state.items()}).items()}
    unet.delete_adapters("fixture")
    folder.mkdir(parents=True, exist_ok=True)
    kohya, diffusers_path = folder / "digitstyle_kohya.safetensors", folder / "digitstyle_diffusers.safetensors"
    save_file(kohya_state, str(kohya))
    save_file(diffusers_state, str(diffusers_path))
    return kohya, diffusers_path


def digits_checkpoint(folder: Path) -> tuple[Path, Path | None, Any]:
    """The digits world's single-file checkpoint (None: its config folder is built into the plugin) and
    its pipeline when the project has the world; otherwise a stand-in of the same architecture with random
    weights, written into `folder` with its config folder."""
    try:
        from worlds.digits.judge import load_pipeline, single_file_path  # type: ignore[import-not-found]
    except ImportError:
        pipe = tiny_pipeline(seed=0)
        write_single_file(pipe, folder / "digits-tiny.safetensors")
        return folder / "digits-tiny.safetensors", write_config_folder(pipe, folder / "config"), pipe
    return Path(single_file_path()), None, load_pipeline(device="cpu")
