"""Vocoder copy-synthesis benchmark: mel L1 and real-time factor on held-out speech.

Each file is read with the front-end (22.05 kHz, loudness-normalised, trimmed),
turned into a log-mel, vocoded with ``Vocoder.vocode`` and re-analysed; the
mel L1 (natural-log units) is between the input log-mel and the log-mel of
the output. RTF = vocoding seconds / audio seconds (lower is faster), measured
after one warm-up call, with ``torch.set_num_threads(threads)``.

    python benchmarks/vocoder.py                       # griffinlim, hifigan and (once trained) fast, 2 threads
    python benchmarks/vocoder.py --chunk-sweep         # also HiFi-GAN RTF per chunk size
    python benchmarks/vocoder.py --fast-arch-rtf       # also the fast architecture's RTF with random weights
    python benchmarks/vocoder.py --repeats 3           # time each file 3 times, keep the fastest (shared, busy cores)

``fast`` is the Vocos vocoder in ``checkpoints/vocoder_fast``; while none is
trained it is skipped with a note. Its speed does not depend on its weights,
so ``--fast-arch-rtf`` measures it untrained (the mel L1 of random weights
means nothing and is not printed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from vckit.audio import load_audio, log_mel
from vckit.config import MelConfig
from vckit.models.vocoder import Vocoder, load_vocoder
from vckit.models.vocoder.vocos import PACKAGED_DIR, Vocos, VocosConfig, is_fast_vocoder

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def held_out_files(n_libri: int = 6, n_vcc: int = 2) -> list[Path]:
    """LibriSpeech utterances of ``n_libri`` speakers plus VCC 2016 SF1 and SM1 (``n_vcc`` each)."""
    libri = sorted((DATA / "librispeech_train_clean_100").glob("*/*.flac"))
    step = max(1, len(libri) // max(1, n_libri))
    files = libri[::step][:n_libri]
    for spk in ("SF1", "SM1"):
        files += sorted((DATA / "vcc2016" / spk).glob("*.wav"))[-n_vcc:]
    return files


def run(voc: Vocoder, mels: list[torch.Tensor], cfg: MelConfig, device: str, chunk: int, repeats: int = 1) -> tuple[float, float]:
    voc.vocode(mels[0][:, :200].to(device), chunk_frames=chunk)  # warm-up
    l1, secs, audio = 0.0, 0.0, 0.0
    for mel in mels:
        mel = mel.to(device)
        best = float("inf")
        for _ in range(repeats):  # the fastest of several runs: robust to other jobs on shared cores
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            wav = voc.vocode(mel, chunk_frames=chunk)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        secs += best
        audio += wav.numel() / cfg.sample_rate
        l1 += float((log_mel(wav, cfg, device) - mel).abs().mean())
    return l1 / len(mels), secs / audio


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocoders", nargs="+", default=["griffinlim", "hifigan", "fast"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk", type=int, default=512, help="chunk_frames for Vocoder.vocode")
    ap.add_argument("--repeats", type=int, default=1, help="time each file this many times and keep the fastest")
    ap.add_argument("--chunk-sweep", action="store_true", help="also time HiFi-GAN for several chunk sizes")
    ap.add_argument("--fast-arch-rtf", action="store_true", help="also time the fast architecture with random weights")
    ap.add_argument("--fast-config", default=None, help="with --fast-arch-rtf: a vocoder training YAML whose generator to time")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = MelConfig()
    files = held_out_files()
    mels = [log_mel(load_audio(f, cfg.sample_rate), cfg) for f in files]
    total = sum(m.shape[-1] for m in mels) * cfg.hop_length / cfg.sample_rate
    print(f"{len(files)} files ({total:.1f} s): {', '.join(f.parent.name + '/' + f.name for f in files)}")
    print(f"device {args.device}, {args.threads} threads, chunk {args.chunk} frames, best of {args.repeats}, torch {torch.__version__}\n")

    print("| vocoder | mel L1 (nats) | RTF |")
    print("|---|---|---|")
    notes = []
    for spec in args.vocoders:
        if spec == "fast" and not is_fast_vocoder(PACKAGED_DIR):
            notes.append(f"fast: skipped, no fast vocoder is trained yet ({PACKAGED_DIR} does not exist)")
            continue
        l1, rtf = run(load_vocoder(spec, cfg, args.device), mels, cfg, args.device, args.chunk, args.repeats)
        print(f"| {spec} | {l1:.3f} | {rtf:.3f} |")
    for note in notes:
        print(f"\n{note}")

    if args.fast_arch_rtf:
        gen_cfg = VocosConfig()
        if args.fast_config:
            from vckit.training.vocoder import load_vocoder_config

            gen_cfg = load_vocoder_config(args.fast_config).generator
        torch.manual_seed(0)
        voc = Vocos(gen_cfg, cfg).to(args.device).eval()
        n = sum(p.numel() for p in voc.parameters())
        _, rtf = run(voc, mels, cfg, args.device, args.chunk, args.repeats)
        arch = f"dim {gen_cfg.dim}, hidden {gen_cfg.intermediate_dim}, {gen_cfg.layers} layers"
        print(f"\nfast architecture, random weights ({arch}; {n / 1e6:.2f} M parameters): RTF {rtf:.4f}")

    if args.chunk_sweep:
        long_mel = torch.cat(mels, -1)  # one long input, so large chunks are really used
        voc = load_vocoder("hifigan", cfg, args.device)
        secs = long_mel.shape[-1] * cfg.hop_length / cfg.sample_rate
        print(f"\nHiFi-GAN RTF on one {secs:.0f} s input, by chunk size\n")
        print("| chunk_frames | RTF |")
        print("|---|---|")
        for chunk in (64, 128, 256, 512, 1024, long_mel.shape[-1]):
            voc.vocode(long_mel[:, :chunk], chunk_frames=chunk)
            t = time.perf_counter()
            voc.vocode(long_mel, chunk_frames=chunk)
            label = f"{chunk} (whole)" if chunk == long_mel.shape[-1] else str(chunk)
            print(f"| {label} | {(time.perf_counter() - t) / secs:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
