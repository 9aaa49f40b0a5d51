"""Training throughput (images/s) of one alternating D/R step with the default networks.

On a GPU: 256x256 images, 1 and 3 channels, the default TrainConfig (bf16 autocast;
the networks are channels_last on every device). On a CPU a reduced size, so that the suite stays a quick smoke run there.
"""

import pytest
import torch
from conftest import measure

from patchgan_fast import PatchGAN, TrainConfig
from patchgan_fast.models.training import train_step

GPU = torch.cuda.is_available()
SIZE, BATCH, EXTRA = (256, 32, {}) if GPU else (32, 8, dict(width=8, depth=2, disc_width=8, disc_layers=2))


@pytest.mark.parametrize("channels", [1, 3])
def test_train_step(benchmark, device, record, channels):
    config = TrainConfig(image_size=SIZE, patch_size=16 if SIZE > 32 else 8, batch_size=BATCH, progress=False, **EXTRA)
    model = PatchGAN(config, channels, (0.5,) * channels, (0.25,) * channels).to(device)  # channels_last
    opt_r = torch.optim.AdamW(model.reconstructor.parameters(), lr=config.lr)
    opt_d = torch.optim.AdamW(model.discriminator.parameters(), lr=config.lr)
    x = torch.randint(0, 256, (BATCH, channels, SIZE, SIZE), dtype=torch.uint8, device=device)
    keys = torch.arange(BATCH, device=device)
    state = {"step": 0}

    def step():
        train_step(model, model.reconstructor, model.discriminator, opt_r, opt_d, x, keys, state["step"])
        state["step"] += 1

    benchmark.group = f"train_step {SIZE}x{SIZE}"
    seconds = measure(benchmark, step, device)
    if seconds is None:
        return
    benchmark.extra_info["images_per_s"] = round(BATCH / seconds, 1)
    record("training_images_per_second", BATCH / seconds, "images/s",
           dict(size=SIZE, channels=channels, batch=BATCH, loss=config.loss, width=config.width, depth=config.depth))
