"""Training-step speed of msgfm_tiny on a mixed-sensor batch against a plain timm Swin with the same decoder.

Both models have the same width, depths, heads, window, chip size, batch size and decoder design (msGFM's
U-Net over the stride 4-32 maps, msgfm.models.decoders, with the same chip target normalisation); the
reference is timm's SwinTransformer with a SimMIM mask token on single-sensor (Sentinel-2 L2A, 12 band) chips.
msgfm_tiny gets a batch mixing all four sensors (paired, cross-sensor decoding with p_cross) and its MoE
layers, with the pipeline's objective (params.yaml's `model` defaults: the joint cross term's fused inputs and
the visible-pixel fill; `--cross-design translate --no-fill` for the objective before them). Steps of the two
are interleaved and the median step time of each is compared, so load from other processes hits both alike;
the ratio of median CPU times (process_time, less sensitive to other processes on a shared machine) is printed
beside it. Both use fused AdamW (one pass over the parameters; msGFM has more of them: four decoders and the
experts). Also printed: FLOPs per step (torch.utils.flop_counter), achieved FLOP/s against a float32 2048x2048
matmul measured in the same run, and peak resident memory. The joint design encodes one fused input per pair it
decodes across, so a step encodes more images than its chips: `encoder_inputs_per_step` counts them (the mean over
the timed steps) and `throughput_ratio_per_encoder_input` compares images encoded per second, the work of both
models counted alike. Prints one JSON object; target: throughput ratio >= 0.85 (of chips per step).

    .venv/bin/python benchmarks/bench_model.py [--batch 16] [--steps 10] [--threads 1]
        [--cross-design translate] [--no-fill]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import psutil
import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from msgfm.config import ModelParams
from msgfm.models import create_model_from_params, masked_l1
from msgfm.models.decoders import build_decoder
from msgfm.models.msgfm import upsample_mask, visible_stats
from msgfm.sensors import PAIRS, S2_L2A_BANDS, SENSORS

TARGET_RATIO = 0.85


class TimmSwinMIM(nn.Module):
    """Reference: timm SwinTransformer + SimMIM mask token, one sensor, and msGFM's own decoder design
    (`build_decoder`, the U-Net over every stage map) and chip target normalisation: like with like."""

    def __init__(self, cfg, in_chans: int) -> None:
        super().__init__()
        self.swin = SwinTransformer(
            img_size=cfg.chip_px,
            patch_size=cfg.patch_px,
            in_chans=in_chans,
            embed_dim=cfg.embed_dim,
            depths=cfg.depths,
            num_heads=cfg.num_heads,
            window_size=cfg.window_size,
            num_classes=0,
        )
        self.mask_token = nn.Parameter(torch.zeros(cfg.embed_dim))
        self.decoder = build_decoder("s2", cfg)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
        """Masked L1 of the reconstruction from every stage map."""
        t = self.swin.patch_embed(x)
        m = token_mask.unsqueeze(-1).to(t.dtype)
        t = t * (1 - m) + self.mask_token * m
        maps = []
        for layer in self.swin.layers:
            t = layer(t)
            maps.append(t.permute(0, 3, 1, 2))
        mean, std = visible_stats(x, pixel_mask)
        return masked_l1(mean + std * self.decoder(maps, S2_L2A_BANDS), x, pixel_mask)


def mixed_batch(batch_size: int, chip: int, generator: torch.Generator) -> dict:
    """batch_size chips split evenly over the four sensors, every chip paired with its partner."""
    per = batch_size // len(SENSORS)
    bands = {s: (S2_L2A_BANDS if s == "s2" else SENSORS[s].band_names) for s in SENSORS}
    images = {s: torch.randn(per, len(b), chip, chip, generator=generator) for s, b in bands.items()}
    partner = {s: torch.arange(per) for s in SENSORS}
    return {"images": images, "bands": bands, "partner": partner}


def matmul_peak_flops(n: int = 2048, reps: int = 5) -> float:
    """Best float32 FLOP/s of an n x n matmul on this machine with the current thread setting."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def step_flops(step) -> int:
    """FLOPs of one forward + backward pass, counted by torch's FlopCounterMode (matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        step(optimize=False)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="chips per step (split over 4 sensors for msGFM)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cross-design", default=ModelParams().cross_design, help="joint | translate")
    parser.add_argument("--no-fill", action="store_true", help="without the visible-pixel fill")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    fill = () if args.no_fill else tuple(ModelParams().fill_scales_px)
    model = create_model_from_params(ModelParams(), cross_design=args.cross_design, fill_scales_px=fill)
    cfg = model.config
    batch = mixed_batch(args.batch, cfg.chip_px, gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    ref = TimmSwinMIM(cfg, in_chans=len(S2_L2A_BANDS))
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-4, fused=True)
    ref_x = torch.randn(args.batch, len(S2_L2A_BANDS), cfg.chip_px, cfg.chip_px, generator=gen)
    ref_masks = model.generate_masks({"s2": ref_x}, gen)["s2"]
    ref_token_mask = upsample_mask(ref_masks, cfg.mask_patch_px // cfg.patch_px)
    ref_pixel_mask = upsample_mask(ref_masks, cfg.mask_patch_px)

    encoded: list[int] = []  # encoder inputs of each msGFM step: its chips plus the joint design's fused pairs

    def msgfm_step(optimize: bool = True) -> None:
        out = model(batch, generator=gen)
        fused = sum(len(out.cross_index[f"{a}->{b}"]) for a, b in PAIRS if f"{a}->{b}" in out.cross_index)
        encoded.append(args.batch + (fused if cfg.cross_design == "joint" else 0))
        loss = out.loss
        loss.backward()
        if optimize:
            opt.step()
        opt.zero_grad(set_to_none=True)

    def ref_step(optimize: bool = True) -> None:
        loss = ref(ref_x, ref_token_mask, ref_pixel_mask)
        loss.backward()
        if optimize:
            ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        msgfm_step()
    rss_msgfm_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(args.warmup):
        ref_step()

    encoded.clear()
    times: dict[str, list[float]] = {"msgfm": [], "timm": []}
    cpu_times: dict[str, list[float]] = {"msgfm": [], "timm": []}
    for _ in range(args.steps):
        for name, step in (("msgfm", msgfm_step), ("timm", ref_step)):
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)
    inputs_per_step = statistics.mean(encoded)
    median = {k: statistics.median(v) for k, v in times.items()}
    median_cpu = {k: statistics.median(v) for k, v in cpu_times.items()}
    flops = {"msgfm": step_flops(msgfm_step), "timm": step_flops(ref_step)}
    peak = matmul_peak_flops()
    throughput = {k: args.batch / v for k, v in median.items()}
    ratio = throughput["msgfm"] / throughput["timm"]
    result = {
        "benchmark": "train_step_msgfm_tiny_vs_timm_swin_same_decoder",
        "batch": args.batch,
        "chip_px": cfg.chip_px,
        "threads": args.threads,
        "cross_design": cfg.cross_design,
        "fill_scales_px": list(cfg.fill_scales_px),
        "steps": args.steps,
        "median_step_s": {k: round(v, 4) for k, v in median.items()},
        "samples_per_s": {k: round(v, 2) for k, v in throughput.items()},
        "throughput_ratio": round(ratio, 3),
        "median_step_cpu_s": {k: round(v, 4) for k, v in median_cpu.items()},
        "throughput_ratio_cpu_time": round(median_cpu["timm"] / median_cpu["msgfm"], 3),
        "encoder_inputs_per_step": {"msgfm": round(inputs_per_step, 2), "timm": args.batch},
        "throughput_ratio_per_encoder_input": round(ratio * inputs_per_step / args.batch, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "flops_per_step": flops,
        "achieved_gflops": {k: round(flops[k] / median[k] / 1e9, 2) for k in median},
        "matmul_peak_gflops": round(peak / 1e9, 2),
        "fraction_of_peak": {k: round(flops[k] / median[k] / peak, 3) for k in median},
        "peak_rss_mb": {
            "after_msgfm_steps": round(rss_msgfm_mb, 1),
            "process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "current": round(psutil.Process().memory_info().rss / 2**20, 1),
        },
        "load_average_1m": round(psutil.getloadavg()[0], 2),
        "cpu_count": psutil.cpu_count(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
