"""Latent caching: each image is encoded by the VAE once, in memory and optionally on disk.

A cached latent is keyed by everything that changes it: the image file's bytes, its bucket and
resize size, and the VAE's encoder weights. A changed image, bucket, resolution or VAE therefore
never reuses a stale latent; an unchanged one is read back instead of encoded again. With
`flip_aug`, the mirrored image's latent is cached beside it (Kohya does the same).
Disk entries live in a hidden `.charlora-cache/` folder inside each concept folder and are written
atomically, so an interrupted run never leaves a half-written latent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import ImageOps
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CharLoRAError
from ..fileio import atomic_path
from .buckets import resize_and_crop
from .images import load_rgb
from .plan import DatasetPlan, Sample

CACHE_DIR_NAME = ".charlora-cache"


def cache_refusal(values: dict) -> str | None:
    """Why latents cannot be cached with these settings, or None."""
    for aug in ("color_aug", "random_crop"):
        if values[aug]:
            return f"{aug} changes every image every step, so a cached latent would freeze one version of it"
    return None


def vae_fingerprint(vae) -> str:
    """A hash of the VAE encoder's weights (the decoder does not affect latents)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        if name.startswith(("encoder.", "quant_conv.")):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def image_to_tensor(image) -> torch.Tensor:
    """PIL RGB -> float tensor (3, H, W) in [-1, 1], as the VAE expects."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(image.height, image.width, 3)
    return data.permute(2, 0, 1).float().div(127.5).sub(1.0)


@dataclass
class CachedLatent:
    latent: torch.Tensor  # (4, h, w), not yet multiplied by the VAE's scaling factor
    flipped: torch.Tensor | None


class LatentCache:
    def __init__(self, vae, flip_aug: bool, to_disk: bool, batch_size: int = 1, seed: int = 0):
        self.vae = vae
        self.flip_aug = flip_aug
        self.to_disk = to_disk
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self.vae_id = vae_fingerprint(vae)
        self.entries: dict[Path, CachedLatent] = {}
        self.encoded = 0  # images encoded by the VAE in this process
        self.read_from_disk = 0

    def key(self, sample: Sample) -> str:
        bucket, resized = sample.choice.bucket, sample.choice.resized
        text = (f"{file_digest(sample.item.path)}|{bucket}|{resized}|{self.vae_id}|flip={self.flip_aug}"
                f"|seed={self.seed}")  # the latent is a sample of the VAE's distribution, drawn with the seed
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def disk_path(self, sample: Sample, key: str) -> Path:
        # the full file name: a.png and a.jpg in one folder must not share (and delete) entries
        return sample.item.path.parent / CACHE_DIR_NAME / f"{sample.item.path.name}-{key}.safetensors"

    def get(self, sample: Sample) -> CachedLatent:
        return self.entries[sample.item.path]

    def fill(self, plan: DatasetPlan, progress=None) -> None:
        """Encode (or read back) every sample's latent once."""
        todo: list[tuple[Sample, str]] = []
        for sample in plan.samples:
            if sample.item.path in self.entries:
                continue
            key = self.key(sample)
            if self.to_disk and self._read(sample, key):
                continue
            todo.append((sample, key))
        for start in range(0, len(todo), self.batch_size):
            self._encode(todo[start:start + self.batch_size])
            if progress:
                progress(min(start + self.batch_size, len(todo)), len(todo))

    def _read(self, sample: Sample, key: str) -> bool:
        path = self.disk_path(sample, key)
        if not path.is_file():
            return False
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError):
            return False  # a damaged cache entry is simply encoded again
        if self.flip_aug and "flipped" not in tensors:
            return False
        self.entries[sample.item.path] = CachedLatent(tensors["latent"], tensors.get("flipped"))
        self.read_from_disk += 1
        return True

    @torch.no_grad()
    def _encode(self, group: list[tuple[Sample, str]]) -> None:
        # one VAE call per bucket size inside the group (tensors of one call must share a size)
        by_size: dict[tuple[int, int], list[tuple[Sample, str]]] = {}
        for sample, key in group:
            by_size.setdefault(sample.choice.bucket, []).append((sample, key))
        param = next(self.vae.parameters())
        for members in by_size.values():
            images = [resize_and_crop(load_rgb(s.item.path), s.choice) for s, _ in members]
            pixels = [image_to_tensor(img) for img in images]
            if self.flip_aug:
                pixels += [image_to_tensor(ImageOps.mirror(img)) for img in images]
            batch = torch.stack(pixels).to(param.device, param.dtype)
            generator = torch.Generator().manual_seed(self.seed)
            dist = self.vae.encode(batch).latent_dist
            noise = torch.randn(dist.mean.shape, generator=generator).to(dist.mean.device, dist.mean.dtype)
            latents = (dist.mean + dist.std * noise).float().cpu()
            self.encoded += len(members)
            n = len(members)
            for i, (sample, key) in enumerate(members):
                entry = CachedLatent(latents[i].clone(), latents[n + i].clone() if self.flip_aug else None)
                self.entries[sample.item.path] = entry
                if self.to_disk:
                    self._write(sample, key, entry)

    def _write(self, sample: Sample, key: str, entry: CachedLatent) -> None:
        target = self.disk_path(sample, key)
        for stale in target.parent.glob(f"{glob_escape(sample.item.path.name)}-*.safetensors"):
            if stale != target and len(stale.name) == len(target.name):
                stale.unlink()  # an older latent of this image (changed image, bucket or VAE)
        tensors = {"latent": entry.latent.contiguous()}
        if entry.flipped is not None:
            tensors["flipped"] = entry.flipped.contiguous()
        try:
            with atomic_path(target) as tmp:
                save_file(tensors, str(tmp))
        except OSError as exc:
            raise CharLoRAError(f"cannot write the latent cache in {target.parent} ({exc}); "
                                "free some disk space or turn off cache_latents_to_disk") from exc
