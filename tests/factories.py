"""Shared test factories: tiny timm models and batches at the digits size (16 px)."""
import timm
import torch

from vitkd.losses import Batch

IMG = (16, 16)


def vit(embed_dim=32, depth=2, num_heads=2, **kw):
    """A tiny timm ViT on a 4x4 patch grid of a 16-px image, 10 classes."""
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=embed_dim, depth=depth,
                             num_heads=num_heads, num_classes=10, **kw)


def batch(b=4, seed=0):
    """Random 16-px images and labels, seeded."""
    g = torch.Generator().manual_seed(seed)
    return Batch(images=torch.randn(b, 3, *IMG, generator=g), target=torch.randint(0, 10, (b,), generator=g))
