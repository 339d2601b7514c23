"""Training throughput: `rsgen train` (task denoiser) against a plain diffusers training loop.

Both train the same UNet + mask ControlNet on the same crops of real LoveDA data with the same batch
size. The plain loop is the usual diffusers example: VAE-encode the batch every step, then the
ε-prediction step. rsgen encodes the crop pool once (cached latents) and adds EMA, metadata and
caption/control dropout. Prints seconds per step of each and the ratio.

    python bench/bench_train.py --steps 10 --batch-size 16 --resolution 256
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from gen.train import parse_train_config, train
from gen.train.autoencoder import build_autoencoder, to_tensor
from gen.train.config import AutoencoderArch
from gen.train.denoiser import DenoiserTask, control_images, training_scheduler

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--vae", type=Path, help="a trained VAE folder (default: a random one of the default size)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    vae_dir = args.vae
    if vae_dir is None:
        vae_dir = tmp / "vae"
        build_autoencoder(AutoencoderArch(channels=(16, 32, 64, 64)), args.resolution).save_pretrained(vae_dir)
    raw = {
        "task": "denoiser", "output_dir": str(tmp / "run"), "data_root": str(SHARED), "autoencoder": str(vae_dir),
        "resolution": args.resolution, "pool_size": 64, "batch_size": args.batch_size, "max_steps": args.steps + 2,
        "checkpoint_every": 10**6, "sample_every": 10**6, "log_every": 1, "ema_decay": 0.998,
        "data": [{"kind": "masks", "images": "seg/loveda/images", "masks": "seg/loveda/masks", "palette": "loveda",
                  "gsd": 0.3, "sensor": "aerial"}],
        "model": {"unet_channels": [32, 64, 128, 128], "attention": [False, False, True, True], "layers_per_block": 1},
    }  # fmt: skip
    config = parse_train_config(raw)

    # Plain loop: same modules, VAE encode every step, no EMA / metadata / dropout.
    task = DenoiserTask(config, Accelerator(cpu=True))
    obj = task.objective
    vae, noise_schedule = task.vae, training_scheduler()
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(args.steps + 2):
        tick = time.perf_counter()
        index = torch.randint(0, len(obj.pool), (args.batch_size,), generator=gen).numpy()
        with torch.no_grad():
            latents = vae.encode(to_tensor(obj.pool.images[index])).latent_dist.sample(gen) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, 1000, (args.batch_size,), generator=gen)
        noisy = noise_schedule.add_noise(latents, noise, t)
        text = obj.text_encoder(obj.tokens[index])[0]
        cond = control_images(obj.pool.masks[index])
        metadata = obj.metadata_encoder.encode([None] * len(t))
        down, mid = obj.controlnet(noisy, t, encoder_hidden_states=text, controlnet_cond=cond, class_labels=metadata,
                                   return_dict=False)  # fmt: skip
        pred = obj.unet(noisy, t, encoder_hidden_states=text, class_labels=metadata,
                        down_block_additional_residuals=down, mid_block_additional_residual=mid).sample  # fmt: skip
        loss = F.mse_loss(pred, noise)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step >= 2:  # skip warm-up steps
            times.append(time.perf_counter() - tick)
    plain = sum(times) / len(times)

    tick = time.perf_counter()
    train(config, export=False)
    log = [line for line in (tmp / "run" / "log.jsonl").read_text().splitlines()]
    import json

    rsgen = sum(json.loads(x)["s_per_step"] for x in log[2:]) / max(1, len(log) - 2)
    print(f"batch {args.batch_size} at {args.resolution}² (latents {args.resolution // 8}²), {args.steps} steps")
    print(f"plain diffusers loop (VAE encode each step): {plain:.3f} s/step")
    print(f"rsgen train (cached latents, EMA, dropout):  {rsgen:.3f} s/step")
    print(f"speed-up: {plain / rsgen:.2f}×  (total rsgen wall {time.perf_counter() - tick:.1f} s incl. pool + cache)")


if __name__ == "__main__":
    main()
