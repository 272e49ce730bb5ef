"""Train the digits world from scratch: python -m worlds.digits.train --out DIR [--minutes N] [--seed S].

Builds the tokenizer, trains a VAE, then a CLIP text encoder and UNet jointly, and a digit classifier, all on
scikit-learn's 8x8 digits; writes the pipeline in diffusers format (DIR/model), as an A1111-style single file
(DIR/digits-v1.safetensors) and the classifier (DIR/classifier.safetensors). Weights are stored as float16
(the judge loads them as float32) so that both formats together stay under 10 MB.

Deterministic given --seed and --threads while the step caps, not the wall-clock budget, end each phase;
when the host is too slow the budget ends a phase early and the run says so.
"""

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import BASE_MODEL, MODEL_TYPE
from . import data
from .checkpoint import write_single_file
from .judge import DigitClassifier, prompt_accuracy
from .prompts import TRAIN_TEMPLATES, prompt
from .tokenizer import MAX_LENGTH, build_tokenizer

TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02


def log(message: str) -> None:
    print(message, flush=True)


class Clock:
    """Wall-clock budget of the whole run."""

    def __init__(self, minutes: float):
        self.start = time.monotonic()
        self.budget = minutes * 60.0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


# --- the parts ---------------------------------------------------------------------------------------------

def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=4, norm_num_groups=32, sample_size=data.IMAGE_SIZE,
    )


def build_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=64,
    )
    return CLIPTextModel(config)


def build_unet(layers_per_block: int = 1):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=data.IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=layers_per_block,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2, cross_attention_dim=64, attention_head_dim=8,
        norm_num_groups=32,
    )


def build_train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END,
                         beta_schedule="linear", prediction_type="epsilon")


def build_sample_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END,
                         beta_schedule="linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         timestep_spacing="trailing", prediction_type="epsilon")


def build_pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=build_sample_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- phases ------------------------------------------------------------------------------------------------

def train_classifier(digits, labels, train_idx, test_idx, seed: int, epochs: int) -> tuple[DigitClassifier, float]:
    """Train the judge on the training split (with one-pixel shifts); return it and its held-out accuracy."""
    g = torch.Generator().manual_seed(seed)
    model = DigitClassifier()
    x = torch.as_tensor(digits[train_idx])
    y = torch.as_tensor(labels[train_idx])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=max(steps, 1))
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=g).split(64):
            xb = F.pad(x[batch], (1, 1, 1, 1))
            dx, dy = torch.randint(0, 3, (2,), generator=g).tolist()
            xb = xb[:, dy:dy + 8, dx:dx + 8]
            loss = F.cross_entropy(model(xb), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.as_tensor(digits[test_idx])).argmax(1).numpy()
    return model, float((pred == labels[test_idx]).mean())


def train_vae(vae, pixels, seed: int, max_steps: int, seconds: float):
    """Train the VAE (MSE + 1e-4 KL); return the steps done."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    start = time.monotonic()
    vae.train()
    step = 0
    while step < max_steps and time.monotonic() - start < seconds:
        progress = max(step / max_steps, (time.monotonic() - start) / seconds)
        for group in opt.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        batch = pixels[torch.randint(len(pixels), (64,), generator=g)]
        posterior = vae.encode(batch).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, batch) + 1e-4 * posterior.kl().mean() / z[0].numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0:
            log(f"  vae step {step}: loss {loss.item():.5f} ({time.monotonic() - start:.0f} s)")
    vae.eval()
    return step


class EMA:
    """Exponential moving average of parameters, warmed up so early steps do not dominate."""

    def __init__(self, modules, decay: float):
        self.modules = modules
        self.decay = decay
        self.shadow = [[p.detach().clone() for p in m.parameters()] for m in modules]
        self.updates = 0

    @torch.no_grad()
    def update(self):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for m, shadow in zip(self.modules, self.shadow):
            for s, p in zip(shadow, m.parameters()):
                s.lerp_(p.detach(), 1 - d)

    def copies(self):
        """Deep copies of the modules holding the averaged parameters."""
        out = []
        for m, shadow in zip(self.modules, self.shadow):
            c = copy.deepcopy(m)
            with torch.no_grad():
                for p, s in zip(c.parameters(), shadow):
                    p.copy_(s)
            out.append(c.eval())
        return out


def prompt_table(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids of every (digit, template) prompt, shape (10, T, L), and of the empty prompt, shape (L,)."""
    ids = [[tokenizer(prompt(d, t), padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
            for t in TRAIN_TEMPLATES] for d in range(10)]
    empty = tokenizer("", padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
    return torch.tensor(ids), torch.tensor(empty)


def train_denoiser(unet, text_encoder, latents_mean, latents_std, labels, ids, empty_ids, scaling: float,
                   seed: int, max_steps: int, seconds: float, batch_size: int, lr: float, ema_decay: float,
                   snr_gamma: float, uncond: float):
    """Train the UNet and text encoder together on posterior samples; return (steps, ema)."""
    g = torch.Generator().manual_seed(seed)
    noise_scheduler = build_train_scheduler()
    alphas = noise_scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ema = EMA([unet, text_encoder], ema_decay)
    labels = torch.as_tensor(labels)
    unet.train()
    text_encoder.train()
    warmup = 100
    start = time.monotonic()
    step, running = 0, 0.0
    while step < max_steps and time.monotonic() - start < seconds:
        # Progress is the larger of steps and time used, so the learning rate anneals fully even when the
        # host is slow and the wall-clock budget, not the step cap, ends the phase.
        progress = min(1.0, max(step / max_steps, (time.monotonic() - start) / seconds))
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        idx = torch.randint(len(labels), (batch_size,), generator=g)
        eps = torch.randn(latents_mean[idx].shape, generator=g)
        z = (latents_mean[idx] + latents_std[idx] * eps) * scaling
        template = torch.randint(ids.shape[1], (batch_size,), generator=g)
        input_ids = ids[labels[idx], template]
        drop = torch.rand(batch_size, generator=g) < uncond
        input_ids[drop] = empty_ids
        t = torch.randint(0, TRAIN_TIMESTEPS, (batch_size,), generator=g)
        noise = torch.randn(z.shape, generator=g)
        noisy = noise_scheduler.add_noise(z, noise, t)
        cond = text_encoder(input_ids)[0]
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        if snr_gamma > 0:
            # Min-SNR-gamma weighting (Hang et al. 2023): stops the easy low-noise steps from dominating.
            s = snr[t]
            per_sample = per_sample * torch.clamp(s, max=snr_gamma) / s
        loss = per_sample.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update()
        step += 1
        running += loss.item()
        if step % 100 == 0:
            rate = (time.monotonic() - start) / step
            log(f"  denoiser step {step}: loss {running / 100:.4f}, lr {opt.param_groups[0]['lr']:.2e}, "
                f"{rate:.2f} s/step ({time.monotonic() - start:.0f} s)")
            running = 0.0
    unet.eval()
    text_encoder.eval()
    return step, ema


# --- writing -----------------------------------------------------------------------------------------------

def save_world(out: Path, vae, text_encoder, tokenizer, unet, classifier, metadata: dict[str, str]) -> None:
    """Write diffusers format (float16), the single file (float16) and the classifier (float32)."""
    from safetensors.torch import save_file

    half = [copy.deepcopy(m).to(torch.float16) for m in (vae, text_encoder, unet)]
    pipe = build_pipeline(half[0], half[1], tokenizer, half[2])
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    pipe.save_pretrained(str(model_dir), safe_serialization=True)
    # transformers 5 writes only tokenizer.json; keep the plain BPE files too for older readers.
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(out / "tokenizer-src" / name, model_dir / "tokenizer" / name)
    write_single_file(out / "digits-v1.safetensors", half[2], half[0], half[1], metadata)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(out / "classifier.safetensors"),
              metadata={"format": "pt", "what": "digits-world judge: CNN over 8x8 digits (0..16) -> 10 logits"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worlds.digits.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the world into")
    parser.add_argument("--minutes", type=float, default=55.0, help="wall-clock budget of the whole run")
    parser.add_argument("--seed", type=int, default=0)
    # One thread: results depend on the thread count, and on a busy host two threads were measured 17x slower
    # per step than one (each tiny op waits for the descheduled second thread).
    parser.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it)")
    parser.add_argument("--vae-steps", type=int, default=500)
    parser.add_argument("--unet-steps", type=int, default=4000)
    parser.add_argument("--classifier-epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--layers-per-block", type=int, default=1, help="UNet resnet/attention layers per level")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR weighting; 0 turns it off")
    parser.add_argument("--select-seeds", type=int, default=20,
                        help="seeds per digit used to choose between EMA and raw weights (0: take EMA)")
    parser.add_argument("--eval-seeds", type=int, default=30, help="seeds per digit of the final table (0: skip)")
    args = parser.parse_args(argv)

    clock = Clock(args.minutes)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log(f"digits world: seed {args.seed}, {args.threads} threads, budget {args.minutes:g} min, out {out}")

    digits, labels = data.load()
    train_idx, test_idx = data.split_indices(len(labels))

    t0 = time.monotonic()
    classifier, held_out = train_classifier(digits, labels, train_idx, test_idx, args.seed, args.classifier_epochs)
    log(f"classifier: {held_out:.4f} on {len(test_idx)} held-out real digits ({time.monotonic() - t0:.0f} s)")

    tokenizer = build_tokenizer(out / "tokenizer-src")
    pixels = data.to_pixels(digits)
    torch.manual_seed(args.seed)
    vae = build_vae()
    t0 = time.monotonic()
    vae_seconds = min(0.1 * clock.budget, 300.0)
    vae_steps = train_vae(vae, pixels, args.seed + 1, args.vae_steps, vae_seconds)
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
        mean, std = posterior.mean, posterior.std
        recon = vae.decode(mean).sample
        scaling = float(1.0 / torch.cat([mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(args.seed))]).std())
    vae.register_to_config(scaling_factor=scaling)
    log(f"vae: {vae_steps} steps in {time.monotonic() - t0:.0f} s, reconstruction MSE "
        f"{F.mse_loss(recon, pixels).item():.5f}, scaling factor {scaling:.4f}"
        + ("" if vae_steps == args.vae_steps else " (stopped by the time budget)"))

    torch.manual_seed(args.seed + 2)
    text_encoder = build_text_encoder(tokenizer)
    unet = build_unet(args.layers_per_block)
    ids, empty_ids = prompt_table(tokenizer)
    # Keep time for choosing weights, writing and the final table.
    reserve = 60.0 + 15.0 * (args.select_seeds > 0) + 40.0 * (args.eval_seeds > 0)
    seconds = max(clock.left() - reserve, 1.0)
    log(f"denoiser: up to {args.unet_steps} steps or {seconds / 60:.1f} min")
    t0 = time.monotonic()
    steps, ema = train_denoiser(unet, text_encoder, mean, std, labels, ids, empty_ids, scaling, args.seed + 3,
                                args.unet_steps, seconds, args.batch_size, args.lr, args.ema, args.snr_gamma, 0.1)
    log(f"denoiser: {steps} steps in {time.monotonic() - t0:.0f} s"
        + ("" if steps == args.unet_steps else " (stopped by the time budget: not reproducible step for step)"))

    ema_unet, ema_text = ema.copies()
    chosen = "ema"
    if args.select_seeds > 0:
        # Seeds 1000.. are never used by the reported tables (those start at 0).
        scores = {}
        for name, (u, te) in {"ema": (ema_unet, ema_text), "raw": (unet, text_encoder)}.items():
            table = prompt_accuracy(build_pipeline(vae, te, tokenizer, u), seeds=args.select_seeds,
                                    first_seed=1000, classifier=classifier)
            scores[name] = table.accuracy
        chosen = max(scores, key=scores.get)
        log(f"selection on seeds 1000..: ema {scores['ema']:.3f}, raw {scores['raw']:.3f} -> {chosen}")
    if chosen == "ema":
        unet, text_encoder = ema_unet, ema_text

    metadata = {
        "modelspec.title": "Atrium digits world v1",
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.resolution": "16x16",
        "atrium.base_model": BASE_MODEL,
        "atrium.model_type": MODEL_TYPE,
        "atrium.what": "tiny SD 1.x-layout pipeline trained from scratch on scikit-learn handwritten digits; "
                       "components' configs in worlds/digits/model",
        "atrium.training": json.dumps({"seed": args.seed, "threads": args.threads, "vae_steps": vae_steps,
                                       "denoiser_steps": steps, "weights": chosen, "snr_gamma": args.snr_gamma,
                                       "batch_size": args.batch_size, "layers_per_block": args.layers_per_block, "lr": args.lr, "ema": args.ema}),
    }
    save_world(out, vae, text_encoder, tokenizer, unet, classifier, metadata)
    shutil.rmtree(out / "tokenizer-src")
    log(f"wrote {out} ({clock.elapsed() / 60:.1f} min so far)")

    if args.eval_seeds > 0:
        from .judge import load_classifier, load_pipeline

        table = prompt_accuracy(load_pipeline(model_dir=out / "model"), seeds=args.eval_seeds,
                                classifier=load_classifier(out / "classifier.safetensors"))
        log(table.format())
    log(f"total {clock.elapsed() / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
