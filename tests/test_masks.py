"""The masks op: reference vs C++ CPU vs CUDA, bit for bit, and the layout guarantees users rely on."""

import random

import pytest
import torch
from conftest import cpu_and_cuda
from helpers import has_cuda_ops, random_images

from patchgan_fast.ops import reference as R
from patchgan_fast import ops

KEYS = torch.tensor([0, 1, 7, -3, 2**40 + 5, -(2**62)], dtype=torch.int64)
BOX_DEFAULTS = dict(box_count=(1, 4), box_size=(8, 32))

# (size, layout, patch_size, num_copies, box_count, box_size): each row hits one branch.
MASK_CASES = [
    ((32, 32), "phases", 8, 4, None, None),  # square grid, K = 2x2 phases
    ((48, 32), "phases", 8, 9, None, None),  # non-square grid, K = 3x3
    ((24, 40), "phases", 4, 16, None, None),  # odd patch counts (6x10)
    ((32, 48), "random", 8, 4, None, None),  # balanced random, G = 24 (Feistel domain 32, cycle walking)
    ((20, 20), "random", 4, 3, None, None),  # K not dividing G = 25
    ((64, 64), "random", 4, 7, None, None),  # G = 256
    ((8, 8), "random", 4, 2, None, None),  # smallest grid, G = 4
    ((32, 48), "boxes", 0, 1, (1, 4), (8, 32)),  # training boxes, one copy
    ((37, 29), "boxes", 0, 3, (0, 6), (1, 29)),  # odd size, boxes up to the short side, zero boxes allowed
    ((16, 16), "boxes", 0, 2, (2, 2), (16, 16)),  # boxes as large as the image
    ((16, 24), "none", 8, 1, None, None),  # plain reconstruction
]


def _kwargs(layout, patch_size, num_copies, box_count, box_size, seed):
    return dict(layout=layout, patch_size=patch_size, num_copies=num_copies, seed=seed,
                box_count=box_count or BOX_DEFAULTS["box_count"], box_size=box_size or BOX_DEFAULTS["box_size"])


def _fmix32_int(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_hash_matches_plain_python_integers():
    rng = random.Random(0)
    for _ in range(200):
        seed, key = rng.randrange(2**32), rng.randrange(-(2**63), 2**63)
        stream, index = rng.randrange(2**32), rng.randrange(2**32)
        k = key & (2**64 - 1)
        h = _fmix32_int(seed ^ 0x9E3779B9)
        for word in (k & 0xFFFFFFFF, k >> 32, stream, index):
            h = _fmix32_int(h ^ word)
        got = R.hash_u32(seed, torch.tensor([key]), stream, index)
        assert int(got) == h


@pytest.mark.parametrize("seed", [0, 123, 2**32 - 1])
@pytest.mark.parametrize("size,layout,patch_size,num_copies,box_count,box_size", MASK_CASES)
def test_build_masks_cpp_equals_reference(size, layout, patch_size, num_copies, box_count, box_size, seed):
    kw = _kwargs(layout, patch_size, num_copies, box_count, box_size, seed)
    ref = R.build_masks_reference(KEYS, size, **kw)
    got = torch.ops.patchgan_fast.build_masks(
        KEYS, size[0], size[1], ops.LAYOUTS[layout], patch_size, num_copies, seed, *kw["box_count"], *kw["box_size"])
    assert got.dtype == torch.bool and got.shape == (num_copies, KEYS.numel(), *size)
    assert torch.equal(got, ref)


@pytest.mark.cuda
@pytest.mark.parametrize("seed", [0, 2**32 - 1])
@pytest.mark.parametrize("size,layout,patch_size,num_copies,box_count,box_size", MASK_CASES)
def test_build_masks_cuda_equals_cpu(size, layout, patch_size, num_copies, box_count, box_size, seed):
    assert has_cuda_ops(), "patchgan_fast._C was built without CUDA on a machine that has a GPU"
    kw = _kwargs(layout, patch_size, num_copies, box_count, box_size, seed)
    cpu = ops.build_masks(KEYS, size, **kw)
    cuda = ops.build_masks(KEYS.cuda(), size, **kw)
    assert cuda.is_cuda and torch.equal(cuda.cpu(), cpu)
    if layout in ("phases", "random"):
        grid = (size[0] // patch_size, size[1] // patch_size)
        a_cpu = ops.patch_assignment(KEYS, grid, layout=layout, num_copies=num_copies, seed=seed)
        a_cuda = ops.patch_assignment(KEYS.cuda(), grid, layout=layout, num_copies=num_copies, seed=seed)
        assert torch.equal(a_cuda.cpu(), a_cpu)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("layout,num_copies", [("phases", 4), ("phases", 9), ("random", 2), ("random", 5)])
def test_every_patch_hidden_in_exactly_one_copy(device, layout, num_copies):
    p, size = 4, (36, 24)
    masks = ops.build_masks(KEYS.to(device), size, layout=layout, patch_size=p, num_copies=num_copies, seed=9)
    assert torch.equal(masks.sum(0), torch.ones_like(masks[0], dtype=torch.int64))
    # patch-aligned: constant within each P x P patch
    k, b, h, w = masks.shape
    per_patch = masks.view(k, b, h // p, p, w // p, p)
    assert torch.equal(per_patch.all(dim=(3, 5)), per_patch.any(dim=(3, 5)))
    # the assignment says the same thing
    a = ops.patch_assignment(KEYS.to(device), (h // p, w // p), layout=layout, num_copies=num_copies, seed=9)
    assert torch.equal(per_patch.any(dim=(3, 5)), a.long().unsqueeze(0) == torch.arange(k, device=device).view(-1, 1, 1, 1))


def test_random_layout_is_balanced_and_depends_on_the_key():
    keys = torch.arange(50, dtype=torch.int64)
    a = ops.patch_assignment(keys, (7, 9), layout="random", num_copies=4, seed=3)
    counts = torch.stack([(a == k).flatten(1).sum(1) for k in range(4)], dim=1)  # [B, K]
    assert int(counts.max() - counts.min()) <= 1 and bool((counts.sum(1) == 63).all())
    distinct = {tuple(row.tolist()) for row in a.flatten(1)}
    assert len(distinct) == 50
    other_seed = ops.patch_assignment(keys, (7, 9), layout="random", num_copies=4, seed=4)
    assert not torch.equal(a, other_seed)


@pytest.mark.parametrize("layout", ["random", "boxes"])
def test_masks_depend_on_key_not_batch_position(layout):
    kw = dict(layout=layout, patch_size=8, num_copies=4 if layout == "random" else 2, seed=5)
    full = ops.build_masks(KEYS, (32, 32), **kw)
    order = torch.tensor([4, 0, 5, 2])
    part = ops.build_masks(KEYS[order], (32, 32), **kw)
    assert torch.equal(part, full[:, order])
    alone = ops.build_masks(KEYS[3:4], (32, 32), **kw)
    assert torch.equal(alone, full[:, 3:4])


def test_boxes_respect_count_and_size_ranges():
    boxes = R._boxes_reference(torch.arange(200), 3, (40, 30), (2, 5), (3, 12), seed=1)
    used = boxes[..., 2] > 0
    counts = used.sum(-1)
    assert int(counts.min()) == 2 and int(counts.max()) == 5
    y0, x0, h, w = boxes[used].unbind(-1)
    assert int(h.min()) == 3 and int(h.max()) == 12 and int(w.min()) == 3 and int(w.max()) == 12
    assert bool(((y0 >= 0) & (y0 + h <= 40) & (x0 >= 0) & (x0 + w <= 30)).all())


# (input dtype, input layout, layout, num_copies, normalization, out dtype, out memory format)
MASK_IMAGE_CASES = [
    (torch.uint8, "contiguous", "phases", 4, True, torch.float32, torch.contiguous_format),
    (torch.uint8, "contiguous", "phases", 4, True, torch.bfloat16, torch.channels_last),
    (torch.uint8, "channels_last", "random", 3, False, torch.float16, torch.contiguous_format),
    (torch.float32, "contiguous", "random", 2, True, torch.bfloat16, torch.channels_last),
    (torch.float32, "sliced", "boxes", 2, False, torch.float32, torch.contiguous_format),
    (torch.float16, "contiguous", "none", 1, True, torch.float32, torch.channels_last),
    (torch.bfloat16, "channels_last", "phases", 9, False, torch.bfloat16, torch.contiguous_format),
]


def _layout_images(x, how):
    if how == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if how == "sliced":  # non-dense strides
        return torch.cat([x, x], dim=3)[..., ::2]
    return x


@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize("in_dtype,in_layout,layout,num_copies,norm,dtype,fmt", MASK_IMAGE_CASES)
def test_mask_images_cpp_equals_reference(channels, in_dtype, in_layout, layout, num_copies, norm, dtype, fmt):
    x = _layout_images(random_images((6, channels, 24, 36), in_dtype, seed=channels), in_layout)
    mean = tuple(0.1 * (c + 1) for c in range(channels)) if norm else None
    std = tuple(0.2 + 0.05 * c for c in range(channels)) if norm else None
    kw = dict(layout=layout, patch_size=4, num_copies=num_copies, seed=11, box_count=(1, 3), box_size=(2, 12),
              mean=mean, std=std, fill=-0.5, dtype=dtype, memory_format=fmt)
    got = torch.ops.patchgan_fast.mask_images(
        x, KEYS, ops.LAYOUTS[layout], 4, num_copies, 11, 1, 3, 2, 12, list(mean or ()), list(std or ()), -0.5, dtype,
        fmt == torch.channels_last)
    ref = R.mask_images_reference(x, KEYS, **kw)
    assert got.shape == (num_copies, 6, channels, 24, 36) and got.dtype == dtype
    assert got.stride() == ref.stride()
    assert torch.equal(got, ref)
    assert got.flatten(0, 1).is_contiguous(memory_format=fmt)
    # semantics: hidden pixels hold the fill value, the others the normalized image
    masks = ops.build_masks(KEYS, (24, 36), layout=layout, patch_size=4, num_copies=num_copies, seed=11,
                            box_count=(1, 3), box_size=(2, 12)).unsqueeze(2).expand_as(got)
    assert bool((got[masks] == -0.5).all())
    expected = R.normalize_reference(x, mean, std).to(dtype).unsqueeze(0).expand_as(got)
    assert torch.equal(got[~masks], expected[~masks])


@pytest.mark.cuda
@pytest.mark.parametrize("in_dtype,in_layout,layout,num_copies,norm,dtype,fmt", MASK_IMAGE_CASES)
def test_mask_images_cuda_equals_cpu(in_dtype, in_layout, layout, num_copies, norm, dtype, fmt):
    for channels in (1, 3, 5):
        x = _layout_images(random_images((6, channels, 24, 36), in_dtype, seed=channels), in_layout)
        mean = tuple(0.1 * (c + 1) for c in range(channels)) if norm else None
        std = tuple(0.2 + 0.05 * c for c in range(channels)) if norm else None
        kw = dict(layout=layout, patch_size=4, num_copies=num_copies, seed=11, box_count=(1, 3), box_size=(2, 12),
                  mean=mean, std=std, fill=-0.5, dtype=dtype, memory_format=fmt)
        cpu = ops.mask_images(x, KEYS, **kw)
        cuda = ops.mask_images(x.cuda(), KEYS.cuda(), **kw)
        assert cuda.stride() == cpu.stride()
        assert torch.equal(cuda.cpu(), cpu)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck(device):
    keys = KEYS.to(device)
    x = random_images((6, 3, 16, 16), torch.uint8, device=device)
    cases = [
        (torch.ops.patchgan_fast.build_masks.default, (keys, 16, 16, 2, 4, 4, 3, 1, 4, 2, 8)),
        (torch.ops.patchgan_fast.build_masks.default, (keys, 16, 16, 3, 4, 2, 3, 1, 4, 2, 8)),
        (torch.ops.patchgan_fast.patch_assignment.default, (keys, 4, 4, 1, 4, 0)),
        (torch.ops.patchgan_fast.mask_images.default,
         (x, keys, 1, 4, 4, 0, 1, 4, 2, 8, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], 0.0, torch.bfloat16, True)),
        (torch.ops.patchgan_fast.mask_images.default,
         (x.float() / 255, keys, 0, 4, 1, 0, 1, 4, 2, 8, [], [], 0.0, torch.float32, False)),
        (torch.ops.patchgan_fast.mask_images.default,  # with the assignment computed by the caller
         (x, keys, 2, 4, 4, 7, 1, 4, 2, 8, [], [], 0.0, torch.float32, False,
          ops.patch_assignment(keys, (4, 4), layout="random", num_copies=4, seed=7))),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_mask_images_compiles_with_torch_compile():
    """The fake implementations let torch.compile trace through the op without a graph break."""
    x = random_images((2, 1, 16, 16), torch.uint8)

    def f(images):
        return ops.mask_images(images, layout="phases", patch_size=4, num_copies=4).float().sum()

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    assert torch.equal(compiled(x), f(x))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("layout,num_copies", [("phases", 4), ("random", 5)])
def test_mask_images_reads_a_given_assignment(device, layout, num_copies):
    """The scoring path computes a chunk's assignment once and gives it to the masks op and the score kernel:
    the copies are those the op makes from the keys, and an assignment it is given is what it hides by."""
    from patchgan_fast.ops import Plan

    keys = KEYS.to(device)
    x = random_images((6, 3, 24, 36), torch.uint8, device=device)
    plan = Plan.build(x.shape, patch_size=4, layout=layout, num_copies=num_copies, seed=11, mean=(0.4,) * 3,
                      std=(0.3,) * 3, fill=-1.0)
    assignment = ops.assign_with(plan, keys)
    assert torch.equal(ops.mask_with(plan, x, keys, assignment), ops.mask_with(plan, x, keys))
    other = (assignment + 1) % num_copies
    hidden = ops.mask_with(plan, x, keys, other)[..., 0, :, :] == -1.0  # fill marks the hidden pixels
    expected = other.repeat_interleave(4, 1).repeat_interleave(4, 2)[None] == torch.arange(
        num_copies, device=device).view(-1, 1, 1, 1)
    assert torch.equal(hidden, expected)
