"""Datasets: the embedded digits split, replayable augmentation, and real on-disk formats."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vitkd.config import ConfigError, DataCfg
from vitkd.data import DIGITS_SPLIT, DataSpec, EpochSampler, build_datasets, load_digits_arrays, sample_seed

SPEC = DataSpec(img_size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_digits_split_sizes_disjoint_and_fixed():
    ds, n_cls = build_datasets(DataCfg(), SPEC, seed=0)
    assert n_cls == 10
    assert {k: len(v) for k, v in ds.items()} == DIGITS_SPLIT == {"train": 1197, "val": 200, "test": 400}
    # disjoint: no image appears in two splits
    keys = {k: {v.items[i].tobytes() + bytes([int(v.targets[i])]) for i in range(len(v))} for k, v in ds.items()}
    assert not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    # the split does not depend on the run seed
    ds2, _ = build_datasets(DataCfg(), SPEC, seed=123)
    assert np.array_equal(ds["test"].targets, ds2["test"].targets)
    images, _ = load_digits_arrays()
    assert images.shape == (1797, 8, 8) and 0 <= images.min() and images.max() <= 1


def test_augmentation_replays_exactly_per_seed_epoch_index():
    ds, _ = build_datasets(DataCfg(augment="light"), SPEC, seed=7)
    tr = ds["train"]
    tr.set_epoch(3)
    a, y, i = tr[5]
    assert a.shape == (3, 16, 16) and i == 5
    torch.manual_seed(999)  # global RNG state does not matter
    b = tr[5][0]
    assert torch.equal(a, b)
    tr.set_epoch(4)
    assert not torch.equal(a, tr[5][0])  # another epoch, another draw
    tr.set_epoch(3)
    assert torch.equal(a, tr[5][0])       # and back
    ds_other, _ = build_datasets(DataCfg(augment="light"), SPEC, seed=8)
    ds_other["train"].set_epoch(3)
    assert not torch.equal(a, ds_other["train"][5][0])
    # eval splits are deterministic and unaugmented
    assert torch.equal(ds["test"][0][0], ds["test"][0][0])


def test_timm_augment_is_seeded_too():
    cfg = DataCfg(augment="timm", auto_augment="rand-m9-mstd0.5", re_prob=0.25, hflip=0.5)
    ds, _ = build_datasets(cfg, SPEC, seed=1)
    tr = ds["train"]
    tr.set_epoch(2)
    x1 = tr[10][0]
    torch.manual_seed(5)
    import random
    random.seed(5)
    assert torch.equal(x1, tr[10][0])
    tr.set_epoch(3)
    assert not torch.equal(x1, tr[10][0])


def test_epoch_sampler_order_and_shards():
    s = EpochSampler(10, seed=3)
    s.set_epoch(0)
    o0 = s.order()
    assert sorted(o0) == list(range(10))
    s.set_epoch(1)
    assert s.order() != o0
    s.set_epoch(0)
    assert s.order() == o0
    shards = [EpochSampler(10, seed=3, rank=r, world=3) for r in range(3)]
    got = [sh.order() for sh in shards]
    assert all(len(g) == 4 for g in got) and set(sum(got, [])) == set(range(10))
    ra = EpochSampler(10, seed=3, repeats=3)
    assert len(ra.order()) == 10 and len({i for i, _ in ra.order()}) < 10   # (index, copy): images repeat
    assert sample_seed(1, 2, 3) == sample_seed(1, 2, 3) != sample_seed(1, 2, 4)


def _write_cifar(root, name, n_train=30, n_test=10, classes=10):
    rng = np.random.RandomState(0)
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    # keys as the official (Python 2) pickles hold them: str after torchvision's latin1 decoding
    label_key = "labels" if name == "cifar10" else "fine_labels"

    def batch(n):
        return {"data": rng.randint(0, 256, size=(n, 3072), dtype=np.uint8),
                label_key: rng.randint(0, classes, size=n).tolist()}
    if name == "cifar10":
        per = n_train // 5
        for i in range(1, 6):
            with open(folder / f"data_batch_{i}", "wb") as f:
                pickle.dump(batch(per), f, protocol=2)
        with open(folder / "test_batch", "wb") as f:
            pickle.dump(batch(n_test), f)
        meta = {"label_names": [f"c{i}" for i in range(classes)]}
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump(meta, f)
    else:
        with open(folder / "train", "wb") as f:
            pickle.dump(batch(n_train), f)
        with open(folder / "test", "wb") as f:
            pickle.dump(batch(n_test), f)
        with open(folder / "meta", "wb") as f:
            pickle.dump({"fine_label_names": [f"c{i}" for i in range(classes)]}, f)


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_from_torchvision_on_disk_format(tmp_path, name, classes):
    _write_cifar(tmp_path, name, classes=classes)
    cfg = DataCfg(name=name, root=str(tmp_path), val_size=5, augment="light")
    spec = DataSpec(img_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    ds, n_cls = build_datasets(cfg, spec, seed=0)
    assert n_cls == classes
    assert (len(ds["train"]), len(ds["val"]), len(ds["test"])) == (25, 5, 10)
    x, y, i = ds["test"][3]
    assert x.shape == (3, 32, 32) and 0 <= y < classes
    # pixel values come from the file: un-normalise and compare with the stored uint8 HWC image
    raw = ds["test"].items[3].astype(np.float32) / 255.0
    torch.testing.assert_close(x * 0.5 + 0.5, torch.from_numpy(raw).permute(2, 0, 1), atol=1e-5, rtol=0)


def test_cifar_missing_files_is_config_error(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(ConfigError, match="no cifar10 found under"):
        build_datasets(DataCfg(name="cifar10", root=str(tmp_path)), SPEC, seed=0)


def test_imagefolder_imagenet_layout(tmp_path):
    rng = np.random.RandomState(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("n01440764", "n01443537", "n01484850"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for j in range(n):
                Image.fromarray(rng.randint(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / f"img_{j}.JPEG")
    cfg = DataCfg(name="imagefolder", root=str(tmp_path), val_size=3, augment="timm")
    spec = DataSpec(img_size=(16, 16), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    ds, n_cls = build_datasets(cfg, spec, seed=0)
    assert n_cls == 3
    assert (len(ds["train"]), len(ds["val"]), len(ds["test"])) == (15, 3, 6)
    x, y, _ = ds["train"][0]
    assert x.shape == (3, 16, 16)
    assert ds["test"][0][0].shape == (3, 16, 16)


def test_imagefolder_missing_split(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(ConfigError, match="val not found"):
        build_datasets(DataCfg(name="imagefolder", root=str(tmp_path)), SPEC, seed=0)


def _light_reference(img: np.ndarray, seed: int, spec: DataSpec, strength: float) -> torch.Tensor:
    """LightAugment as it was written per sample before the batched path (issue 28), kept here as the reference:
    one image, its own generator, its own affine grid."""
    import math
    import torch.nn.functional as F
    x = torch.as_tensor(img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0))
    x = x[None].expand(len(spec.mean), -1, -1)[None]
    if tuple(x.shape[-2:]) != tuple(spec.img_size):
        x = F.interpolate(x, size=spec.img_size, mode="bilinear", align_corners=False, antialias=True)
    g = torch.Generator().manual_seed(seed)
    u = (torch.rand(4, generator=g) * 2 - 1) * strength
    angle, scale = u[0] * math.radians(10), 1 + 0.1 * u[1]
    tx, ty = u[2] * 0.25, u[3] * 0.25
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0].clamp(0, 1)
    return (x - torch.tensor(spec.mean).view(-1, 1, 1)) / torch.tensor(spec.std).view(-1, 1, 1)


@pytest.mark.isa
def test_the_batched_data_path_gives_every_sample_its_own_image_over_a_digits_epoch():
    """A whole digits epoch fetched in shuffled batches (as the DataLoader does, through __getitems__) equals the
    per-sample reference bit for bit, for every sample key, repeated copies included; on this CPU's kernels
    (CI also runs it under ATEN_CPU_CAPABILITY=avx2 and default)."""
    spec = DataSpec(img_size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    ds, _ = build_datasets(DataCfg(name="digits", aug_strength=1.0), spec, seed=7)
    train = ds["train"]
    train.set_epoch(3)
    keys = [int(k) for k in torch.randperm(len(train), generator=torch.Generator().manual_seed(0))]
    keys += [(k, 1) for k in keys[:64]]   # repeated augmentation's second copies
    got = {}
    for i in range(0, len(keys), 64):
        chunk = keys[i:i + 64]
        for key, (x, y, idx) in zip(chunk, train.__getitems__(chunk)):
            assert y == int(train.targets[idx]) and idx == (key[0] if isinstance(key, tuple) else key)
            got[key] = x
    for key, x in got.items():
        i, copy = key if isinstance(key, tuple) else (key, 0)
        seed = sample_seed(7, 3, i, *((copy,) if copy else ()))
        assert torch.equal(x, _light_reference(train.items[i], seed, spec, 1.0)), key
    assert torch.equal(train[keys[0]][0], got[keys[0]])   # one at a time: the same image


def test_the_dataloader_fetches_batches_through_the_batched_path(monkeypatch):
    spec = DataSpec(img_size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    ds, _ = build_datasets(DataCfg(name="digits"), spec, seed=0)
    calls = []
    batch = ds["train"].transform.batch
    monkeypatch.setattr(ds["train"].transform, "batch", lambda imgs, seeds: calls.append(len(seeds)) or batch(imgs, seeds))
    x, y, idx = next(iter(torch.utils.data.DataLoader(ds["train"], batch_size=32)))
    assert calls == [32] and x.shape == (32, 3, 16, 16)
    sub = torch.utils.data.Subset(ds["train"], list(range(10)))   # evaluation's wrapper
    next(iter(torch.utils.data.DataLoader(sub, batch_size=10)))
    assert calls == [32, 10]


def test_light_flip_mirrors_exactly_and_leaves_the_other_draws_alone():
    """Light augmentation's flip is folded into the affine matrix: with no jitter (strength 0), hflip 1 gives the
    exact mirror of every image; with jitter, each matrix is either the unflipped one or its x-mirror, and the
    four jitter draws are the same as without the flip (the flip's draw comes fifth)."""
    spec = DataSpec(img_size=(16, 16), mean=(0.0,) * 3, std=(1.0,) * 3)
    base, _ = build_datasets(DataCfg(name="digits", aug_strength=0.0), spec, seed=1)
    flip, _ = build_datasets(DataCfg(name="digits", aug_strength=0.0, hflip=1.0), spec, seed=1)
    a = torch.stack([x for x, _, _ in base["train"].__getitems__(list(range(32)))])
    b = torch.stack([x for x, _, _ in flip["train"].__getitems__(list(range(32)))])
    assert torch.allclose(b, a.flip(-1), atol=1e-6) and not torch.equal(a, b)
    half, _ = build_datasets(DataCfg(name="digits", aug_strength=1.0, hflip=0.5), spec, seed=1)
    plain, _ = build_datasets(DataCfg(name="digits", aug_strength=1.0), spec, seed=1)
    t_half = half["train"].transform.thetas([11, 12, 13, 14, 15, 16, 17, 18])
    t_plain = plain["train"].transform.thetas([11, 12, 13, 14, 15, 16, 17, 18])
    same = torch.isclose(t_half, t_plain).all(dim=(1, 2))
    mirrored = torch.isclose(t_half[:, :, 0], -t_plain[:, :, 0]).all(dim=1) & torch.isclose(
        t_half[:, :, 1:], t_plain[:, :, 1:]).all(dim=(1, 2))
    assert (same | mirrored).all() and same.any() and mirrored.any()
