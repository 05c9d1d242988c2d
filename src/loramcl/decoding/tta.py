"""Test-time augmentation: K augmented copies of every input, each decoded into one candidate.

Audio: SpecAugment-style masks on the log-mel features the processor made (Whisper features of
Qwen2-Audio): one time mask covering `time` x the clip's valid frames and one frequency mask
covering `freq` x the mel bins, each at a random position, filled with the clip's mean feature
value. SPEC section 6 gives three strengths as (time, frequency) fractions:

    weak (0.2, 0.3)    medium (0.4, 0.6)    strong (0.6, 0.9)

Images: a light random crop (each side keeps `crop_scale`..1 of its length, resized back) and,
when `flip` is on, a horizontal flip with probability 0.5. Flips are off by default: captions of
the synthetic shapes (and of TextCaps, which reads text) name left / right, which a mirror image
contradicts.

Every copy draws its mask or crop from a generator seeded by (seed, item id, copy), so an
evaluation is reproducible and does not depend on the batch size.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from loramcl.config import ConfigError

STRENGTHS = {"weak": (0.2, 0.3), "medium": (0.4, 0.6), "strong": (0.6, 0.9)}  # SPEC section 6


@dataclass
class TTAConfig:
    strength: str = "weak"  # audio: weak | medium | strong (SPEC section 6)
    crop_scale: float = 0.85  # images: smallest kept fraction of each side
    flip: bool = False  # images: horizontal flips (off: captions name left / right)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strength not in STRENGTHS:
            raise ConfigError(f"decoding.tta.strength must be one of {', '.join(STRENGTHS)}, got {self.strength!r}")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ConfigError(f"decoding.tta.crop_scale must be in (0, 1], got {self.crop_scale}")

    @property
    def fractions(self) -> tuple[float, float]:
        return STRENGTHS[self.strength]


def copy_generator(seed: int, item_id: Any, copy: int) -> torch.Generator:
    key = zlib.crc32(f"{seed}/{item_id}/{copy}".encode())
    return torch.Generator().manual_seed(key)


def mask_features(features: torch.Tensor, valid_frames: int, time_fraction: float, freq_fraction: float,
                  generator: torch.Generator) -> torch.Tensor:
    """One time and one frequency mask on (n_mels, frames) log-mel features; returns a new tensor."""
    out = features.clone()
    n_mels = features.shape[0]
    valid_frames = max(1, min(int(valid_frames), features.shape[1]))
    fill = features[:, :valid_frames].mean()
    width_t = int(round(time_fraction * valid_frames))
    width_f = int(round(freq_fraction * n_mels))
    if width_t > 0:
        start = int(torch.randint(0, valid_frames - width_t + 1, (1,), generator=generator))
        out[:, start:start + width_t] = fill
    if width_f > 0:
        start = int(torch.randint(0, n_mels - width_f + 1, (1,), generator=generator))
        out[start:start + width_f, :valid_frames] = fill
    return out


def augment_audio_batch(batch: dict[str, torch.Tensor], item_ids: Sequence[Any], K: int, cfg: TTAConfig) -> dict:
    """A collated audio batch of n items -> K masked copies, copy-major (rows c * n + i)."""
    n = batch["input_ids"].shape[0]
    out = {k: v.repeat(K, *([1] * (v.ndim - 1))) if torch.is_tensor(v) and v.ndim and v.shape[0] == n else v
           for k, v in batch.items()}
    t_frac, f_frac = cfg.fractions
    feats = out["input_features"].clone()
    valid = out.get("feature_attention_mask")
    for c in range(K):
        for i in range(n):
            row = c * n + i
            frames = int(valid[row].sum()) if valid is not None else feats.shape[-1]
            feats[row] = mask_features(feats[row], frames, t_frac, f_frac, copy_generator(cfg.seed, item_ids[i], c))
    out["input_features"] = feats
    return out


def augment_image(image: Any, cfg: TTAConfig, generator: torch.Generator) -> Any:
    """A light random crop (resized back to the original size) and an optional horizontal flip."""
    from PIL import Image

    w, h = image.size
    scale = float(cfg.crop_scale + (1.0 - cfg.crop_scale) * torch.rand((), generator=generator))
    cw, ch = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
    top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
    out = image.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC)
    if cfg.flip and float(torch.rand((), generator=generator)) < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return out


def augment_image_items(items: Sequence[dict], K: int, cfg: TTAConfig, media_key: str = "image") -> list[dict]:
    """n raw image items -> K * n augmented items, copy-major (item c * n + i is copy c of item i)."""
    copies = []
    for c in range(K):
        for i, item in enumerate(items):
            g = copy_generator(cfg.seed, item.get("id", i), c)
            copies.append({**item, media_key: augment_image(item[media_key], cfg, g)})
    return copies
