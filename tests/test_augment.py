"""Augmentations: invariants, determinism, bf16, and property tests (small sizes, CPU; CUDA when present)."""
import math
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from snipnb.skeleton import NTU25, COCO17
from snipnb.augment import (shear, mirror_index, temporal_crop, rotation_matrices, rotate, random_rotate, aimclr_rotate,
                            gaussian_noise, gaussian_kernels, gaussian_blur, zero_axis, random_joint_mask, mask_joints,
                            part_membership, random_part_mask, mask_body_part, spatial_flip, time_flip, slow_view,
                            fast_view, relative_tempo, Step, step, Augment, compose, get_augment, AUGMENT_PRESETS)

RANDOM = [shear, temporal_crop, random_rotate, aimclr_rotate, gaussian_noise, gaussian_blur, zero_axis, mask_joints,
          mask_body_part, spatial_flip, time_flip]

def gen(seed=0, device='cpu'): return torch.Generator(device=device).manual_seed(seed)

def batch(N=4, C=3, T=20, V=25, M=2, seed=0, device='cpu'):
    return torch.randn((N, C, T, V, M), generator=gen(seed)).to(device)

def bone_lengths(x):
    i, j = map(list, zip(*NTU25.bones))
    return (x[:, :, :, i] - x[:, :, :, j]).norm(dim=1)

sizes = st.tuples(st.integers(1, 5), st.integers(1, 40), st.integers(1, 2))   # N, T, M

# ---- every augmentation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('fn', RANDOM, ids=lambda f: f.__name__)
def test_shape_determinism_and_no_inplace(fn):
    x = batch()
    before = x.clone()
    out = fn(x, gen(1))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.equal(out, fn(x, gen(1)))
    assert torch.equal(x, before)                                   # the input is never modified
    fn(x)                                                           # g=None: the default generator

@pytest.mark.parametrize('fn', RANDOM, ids=lambda f: f.__name__)
def test_bf16(fn):
    x = batch()
    out = fn(x.bfloat16(), gen(1))
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    ref = fn(x, gen(1))
    assert (out.float() - ref).abs().max() <= 0.02 * ref.abs().max() + 1e-3

@pytest.mark.parametrize('fn', RANDOM, ids=lambda f: f.__name__)
def test_bad_input(fn):
    with pytest.raises(ValueError, match=r'\(N, C, T, V, M\)'): fn(torch.zeros(2, 3, 4, 25))
    with pytest.raises(ValueError, match='floating'): fn(torch.zeros(2, 3, 4, 25, 1, dtype=torch.long))

def test_seeds_differ():
    x = batch()
    for fn in (shear, temporal_crop, random_rotate, aimclr_rotate, mask_joints, mask_body_part):
        assert not torch.equal(fn(x, gen(1)), fn(x, gen(2))), fn.__name__

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_matches_contract():
    x = batch(N=8, device='cuda')
    for fn in RANDOM:
        out = fn(x, gen(1, 'cuda'))
        assert out.device == x.device and out.shape == x.shape
        assert torch.equal(out, fn(x, gen(1, 'cuda'))), fn.__name__
        assert fn(x.bfloat16(), gen(1, 'cuda')).dtype == torch.bfloat16
    v = relative_tempo(x, x, gen(0, 'cuda'))
    assert v.query.device == x.device and v.fast.sum() == 4
    with pytest.raises(ValueError, match='generator'): shear(x, gen(0))
    for name in AUGMENT_PRESETS: assert get_augment(name)(x, gen(0, 'cuda')).shape == x.shape

# ---- shear ---------------------------------------------------------------------------------------------------------

def shear_matrices(N, C, g, amplitude=0.5):
    "Recover each sample's matrix: the coordinates of frame t are the basis vector e_t, so out[:, :, t] is column t."
    basis = torch.eye(C).view(1, C, C, 1, 1).expand(N, C, C, 1, 1).contiguous()
    return shear(basis, g, amplitude)[..., 0, 0]

@settings(deadline=None, max_examples=25)
@given(sizes, st.sampled_from([2, 3]), st.floats(0, 1), st.integers(0, 2**31))
def test_shear_is_a_per_sample_shear_matrix(size, C, a, seed):
    N, T, M = size
    S = shear_matrices(N, C, gen(seed), a)
    eye = torch.eye(C, dtype=torch.bool)
    assert torch.equal(S[:, eye], torch.ones(N, C))
    assert (S[:, ~eye].abs() <= a + 1e-6).all()
    x = batch(N, C, T, 25, M, seed)
    torch.testing.assert_close(shear(x, gen(seed), a), torch.einsum('nij,njtvm->nitvm', S, x))

def test_shear_zero_is_identity():
    x = batch()
    assert torch.equal(shear(x, amplitude=0.), x)
    assert torch.equal(shear(x.bfloat16(), amplitude=0.), x.bfloat16())

# ---- temporal crop ---------------------------------------------------------------------------------------------

def official_padded(x, ratio):
    pad = x.shape[2] // ratio
    if pad == 0: return x
    return torch.cat([x[:, :, :pad].flip(2), x, x[:, :, -pad:].flip(2)], 2)

@settings(deadline=None, max_examples=30)
@given(st.integers(1, 60), st.integers(0, 30))
def test_mirror_index_matches_the_official_padding(T, pad):
    pad = min(pad, T)
    frames = torch.arange(float(T)).view(1, 1, T, 1, 1)
    expected = torch.cat([frames[:, :, :pad].flip(2), frames, frames[:, :, T - pad:].flip(2)], 2).flatten().long()
    assert torch.equal(mirror_index(T, pad), expected)

@settings(deadline=None, max_examples=25)
@given(sizes, st.sampled_from([2, 3, 6, 10]), st.integers(0, 2**31))
def test_temporal_crop_windows_of_the_padded_clip(size, ratio, seed):
    N, T, M = size
    x = batch(N, 3, T, 5, M, seed)
    out = temporal_crop(x, gen(seed), ratio)
    padded, pad = official_padded(x, ratio), T // ratio
    assert out.shape == x.shape
    for n in range(N):
        assert any(torch.equal(out[n], padded[n, :, s:s + T]) for s in range(2 * pad + 1))

def test_temporal_crop_uses_every_start():
    x = torch.arange(60.).view(1, 1, 60, 1, 1).expand(400, 1, 60, 1, 1).contiguous()
    starts = temporal_crop(x, gen(0))[:, 0, 0, 0, 0]
    # start 0 begins at mirrored frame pad-1 = 9; start 20 at frame 10
    assert set(starts.long().tolist()) == set(mirror_index(60, 10)[:21].tolist())

# ---- rotation ------------------------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=25)
@given(st.lists(st.floats(-math.pi, math.pi), min_size=3, max_size=3))
def test_rotation_matrices_are_rotations(angles):
    R = rotation_matrices(torch.tensor([angles]))[0].double()
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.double), atol=1e-5, rtol=0)
    assert abs(torch.linalg.det(R).item() - 1) < 1e-5

def test_rotation_order_and_direction_follow_aimclr():
    "AimCLR: x first, then y, then z; its Rz sends x to -y for a positive quarter turn."
    a = torch.tensor([[0.3, -0.2, 0.5]])
    c, s = a.cos()[0], a.sin()[0]
    Rx = torch.tensor([[1, 0, 0], [0, c[0], s[0]], [0, -s[0], c[0]]])
    Ry = torch.tensor([[c[1], 0, -s[1]], [0, 1, 0], [s[1], 0, c[1]]])
    Rz = torch.tensor([[c[2], s[2], 0], [-s[2], c[2], 0], [0, 0, 1]])
    v = torch.randn(3)
    # AimCLR applies seq @ R.T axis by axis, x first
    official = ((v @ Rx.T) @ Ry.T) @ Rz.T
    torch.testing.assert_close(rotation_matrices(a)[0] @ v, official)

@settings(deadline=None, max_examples=20)
@given(sizes, st.floats(0, 1.5), st.integers(0, 2**31))
def test_random_rotation_keeps_bone_lengths(size, max_angle, seed):
    N, T, M = size
    x = batch(N, 3, T, 25, M, seed)
    for out in (random_rotate(x, gen(seed), max_angle), aimclr_rotate(x, gen(seed))):
        torch.testing.assert_close(bone_lengths(out), bone_lengths(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.norm(dim=1), x.norm(dim=1), atol=1e-4, rtol=1e-4)

def test_rotation_draws():
    "Recover the drawn angles from the same seed: U(-0.3, 0.3) per axis; AimCLR: one main axis up to 30 degrees."
    N = 500
    basis = torch.eye(3).view(1, 3, 3, 1, 1).expand(N, 3, 3, 1, 1).contiguous()
    R = random_rotate(basis, gen(0), 0.3)[..., 0, 0]
    angles = -0.3 + 0.6 * torch.rand((N, 3), generator=gen(0))
    torch.testing.assert_close(R, rotation_matrices(angles))
    g = gen(1)
    main = torch.randint(0, 3, (N,), generator=g)
    u = torch.rand((N, 3), generator=g)
    angles = u * torch.where(F.one_hot(main, 3).bool(), math.radians(30), math.radians(1))
    torch.testing.assert_close(aimclr_rotate(basis, gen(1))[..., 0, 0], rotation_matrices(angles))
    assert angles.max() <= math.radians(30) and angles.min() >= 0 and set(main.tolist()) == {0, 1, 2}
    assert torch.equal(random_rotate(basis, max_angle=0.), basis)

def test_rotation_of_2d_keypoints_and_bad_channels():
    x = batch(C=2, V=17)
    out = random_rotate(x, gen(0))
    torch.testing.assert_close(out.norm(dim=1), x.norm(dim=1))
    with pytest.raises(ValueError, match='C = 4'): random_rotate(batch(C=4))

# ---- noise, blur, zero axis ----------------------------------------------------------------------------------------

def test_noise():
    x = batch(N=8, T=50)
    out = gaussian_noise(x, gen(0), std=0.01, p=1.)
    assert abs((out - x).std().item() - 0.01) < 5e-4
    assert torch.equal(gaussian_noise(x, gen(0), p=0.), x)
    changed = (gaussian_noise(x, gen(3), p=0.5) != x).flatten(1).any(1)
    assert changed.any() and not changed.all()                       # per sample (8 samples, seed 3)

def blur_reference(x, sigma, kernel_size=15, padding='replicate', normalize=True):
    "Per-sample Python loop with F.conv1d: the obviously-correct version."
    N, C, T, V, M = x.shape
    out = torch.empty_like(x)
    r = kernel_size // 2
    for n in range(N):
        k = torch.exp(-(torch.arange(kernel_size) - r).float()**2 / (2 * sigma[n]**2))
        if normalize: k = k / k.sum()
        h = x[n].permute(0, 2, 3, 1).reshape(-1, 1, T)
        h = F.pad(h, (r, r), mode='constant' if padding == 'zeros' else padding)
        out[n] = F.conv1d(h, k.view(1, 1, -1)).view(C, V, M, T).permute(0, 3, 1, 2)
    return out

@settings(deadline=None, max_examples=20)
@given(sizes, st.sampled_from([3, 7, 15]), st.sampled_from(['replicate', 'zeros']), st.booleans(), st.integers(0, 2**31))
def test_blur_matches_the_per_sample_reference(size, k, padding, normalize, seed):
    N, T, M = size
    x = batch(N, 3, T, 4, M, seed)
    out = gaussian_blur(x, gen(seed), k, p=1., padding=padding, normalize=normalize)
    sigma = 0.1 + 1.9 * torch.rand(N, generator=gen(seed))          # the first draw of gaussian_blur
    torch.testing.assert_close(out, blur_reference(x, sigma, k, padding, normalize), atol=1e-5, rtol=1e-5)

@settings(deadline=None, max_examples=20)
@given(sizes, st.floats(-5, 5), st.integers(0, 2**31))
def test_blur_keeps_constant_signals(size, value, seed):
    N, T, M = size
    x = torch.full((N, 3, T, 4, M), value)
    torch.testing.assert_close(gaussian_blur(x, gen(seed), p=1.), x, atol=1e-5, rtol=1e-5)

def test_blur_keeps_linear_trajectories_away_from_the_edges():
    x = torch.linspace(-1, 1, 60).view(1, 1, 60, 1, 1).expand(3, 3, 60, 2, 1).contiguous()
    out = gaussian_blur(x, gen(0), p=1.)
    torch.testing.assert_close(out[:, :, 7:-7], x[:, :, 7:-7], atol=1e-5, rtol=1e-5)

def test_blur_official_switches_and_kernel():
    torch.testing.assert_close(gaussian_kernels(torch.tensor([0.5, 2.])).sum(-1), torch.ones(2))
    assert abs(gaussian_kernels(torch.tensor([2.]), normalize=False).sum().item() - 2 * math.sqrt(2 * math.pi)) < 1e-3
    x = torch.ones(2, 3, 30, 4, 1)
    assert (gaussian_blur(x, gen(0), p=1., padding='zeros')[:, :, 0] < 1).all()
    with pytest.raises(ValueError, match='odd'): gaussian_blur(x, kernel_size=4)
    assert torch.equal(gaussian_blur(x, p=0.), x)

@settings(deadline=None, max_examples=20)
@given(sizes, st.sampled_from([2, 3]), st.integers(0, 2**31))
def test_zero_axis_zeroes_exactly_one_axis(size, C, seed):
    N, T, M = size
    x = batch(N, C, T, 5, M, seed)
    out = zero_axis(x, gen(seed), p=1.)
    zeroed = (out == 0).flatten(2).all(-1)
    assert (zeroed.sum(1) == 1).all()
    assert torch.equal(out[~zeroed], x[~zeroed])
    assert torch.equal(zero_axis(x, p=0.), x)

# ---- masks ---------------------------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=20)
@given(sizes, st.floats(0, 1), st.integers(0, 2**31))
def test_joint_mask_zeroes_exactly_the_chosen_joints(size, ratio, seed):
    N, T, M = size
    x = batch(N, 3, T, 25, M, seed)
    out, mask = mask_joints(x, gen(seed), ratio), random_joint_mask(N, 25, ratio, gen(seed))
    assert (mask.sum(1) == round(ratio * 25)).all()
    m = mask.view(N, 1, 1, 25, 1).expand_as(x)
    assert (out[m] == 0).all() and torch.equal(out[~m], x[~m])

@settings(deadline=None, max_examples=20)
@given(sizes, st.sampled_from([NTU25, COCO17]), st.integers(0, 2**31))
def test_part_mask_zeroes_exactly_one_part(size, layout, seed):
    N, T, M = size
    V = layout.num_joints
    x = batch(N, layout.dims, T, V, M, seed)
    out, mask = mask_body_part(x, gen(seed), layout), random_part_mask(N, layout, gen(seed))
    names, member = part_membership(layout)
    assert all((member == m).all(1).sum() == 1 for m in mask)       # each mask is one whole part
    m = mask.view(N, 1, 1, V, 1).expand_as(x)
    assert (out[m] == 0).all() and torch.equal(out[~m], x[~m])

def test_masks_with_probability_and_errors():
    x = batch()
    assert torch.equal(mask_joints(x, p=0.), x) and torch.equal(mask_body_part(x, p=0.), x)
    assert torch.equal(mask_joints(x, ratio=0.), x)
    with pytest.raises(ValueError, match='25 joints'): mask_body_part(batch(V=17))

# ---- flips ---------------------------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=20)
@given(sizes, st.sampled_from([NTU25, COCO17]), st.integers(0, 2**31))
def test_flip_twice_is_identity(size, layout, seed):
    N, T, M = size
    x = batch(N, layout.dims, T, layout.num_joints, M, seed)
    assert torch.equal(spatial_flip(spatial_flip(x, layout=layout, p=1.), layout=layout, p=1.), x)
    assert torch.equal(time_flip(time_flip(x, p=1.), p=1.), x)

def test_flip_convention():
    x = batch()
    out = spatial_flip(x, gen(0), p=1.)
    L, R = NTU25.joint('hand_left'), NTU25.joint('hand_right')
    assert torch.equal(out[:, 0, :, L], -x[:, 0, :, R]) and torch.equal(out[:, 1:, :, L], x[:, 1:, :, R])
    assert torch.equal(spatial_flip(x, p=1., lateral_axis=None), x[:, :, :, NTU25.flip_index()])   # AimCLR
    assert torch.equal(spatial_flip(x, p=0.), x)
    torch.testing.assert_close(bone_lengths(out).sort(-2).values, bone_lengths(x).sort(-2).values)
    changed = (spatial_flip(batch(N=16), gen(1)) != batch(N=16)).flatten(1).any(1)
    assert changed.any() and not changed.all()
    assert torch.equal(time_flip(x, p=1.), x.flip(2))

# ---- tempo ---------------------------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=25)
@given(st.integers(2, 60), st.sampled_from([2, 3]))
def test_tempo_views_are_the_expected_slices(T, factor):
    x = torch.arange(float(T)).view(1, 1, T, 1, 1)
    assert slow_view(x, factor).flatten().tolist() == list(range(T // factor))
    assert fast_view(x, factor).flatten().tolist() == list(range(0, T, factor))[:T // factor]

@settings(deadline=None, max_examples=20)
@given(st.integers(1, 9), st.integers(2, 40), st.integers(0, 2**31))
def test_relative_tempo_follows_rvtclr(N, T, seed):
    q, k = batch(N, 3, T, 4, 1, seed), batch(N, 3, T, 4, 1, seed + 1)
    v = relative_tempo(q, k, gen(seed))
    assert v.fast.sum() == N - int(N * 0.5)                         # RVTCLR: randperm[:int(B * 0.5)] slow
    for n in range(N):
        same, other = (fast_view, slow_view) if v.fast[n] else (slow_view, fast_view)
        assert torch.equal(v.query[n], same(q[n:n+1])[0]) and torch.equal(v.key[n], same(k[n:n+1])[0])
        assert torch.equal(v.key_other[n], other(k[n:n+1])[0])
    assert torch.equal(relative_tempo(q, k, gen(seed)).fast, v.fast)
    with pytest.raises(ValueError, match='differ'): relative_tempo(q, k[:, :, :T - 1])

# ---- pipelines -----------------------------------------------------------------------------------------------------

def test_step_records_every_parameter():
    assert repr(step(shear, amplitude=0.3)) == 'shear(amplitude=0.3)'
    assert repr(Step(spatial_flip)) == "spatial_flip(layout='ntu25', p=0.5, lateral_axis=0)"
    with pytest.raises(TypeError): step(shear, amplitud=0.3)

def test_presets():
    assert str(get_augment('skeletonclr')) == ("Augment('skeletonclr'):\n  1. temporal_crop(padding_ratio=6)\n"
                                               "  2. shear(amplitude=0.5)")
    assert [s.fn for s in get_augment('aimclr_extreme').steps] == [temporal_crop, shear, gaussian_noise, gaussian_blur,
                                                                    zero_axis]
    assert all(s.params.get('p', 0.5) == 0.5 for s in get_augment('aimclr_extreme').steps)
    x = batch()
    assert get_augment('none')(x) is x
    for name in AUGMENT_PRESETS:
        aug = get_augment(name)
        assert torch.equal(aug(x, gen(0)), aug(x, gen(0))) and aug(x).shape == x.shape
    g = gen(0)
    ref = shear(temporal_crop(x, g), g)
    assert torch.equal(get_augment('skeletonclr')(x, gen(0)), ref)
    assert torch.equal(compose(temporal_crop, step(shear, amplitude=0.5))(x, gen(0)), ref)
    assert get_augment(aug) is aug
    with pytest.raises(KeyError, match='skeletonclr'): get_augment('simclr')

# ---- a real sample -------------------------------------------------------------------------------------------------

@pytest.mark.realdata
def test_on_a_real_ntu_sample(shared_data):
    from snipnb.formats import read_skeleton
    from snipnb.skeleton import normalize_skeleton
    seq = read_skeleton(shared_data/'ntu_rgbd/raw_skeleton/S001C001P001R001A001.skeleton')
    x = torch.from_numpy(normalize_skeleton(seq.joints)).permute(3, 0, 2, 1)[None].expand(4, -1, -1, -1, -1).contiguous()
    assert torch.equal(spatial_flip(spatial_flip(x, p=1.), p=1.), x)
    assert (bone_lengths(random_rotate(x, gen(0))) - bone_lengths(x)).abs().max() < 1e-4
    for name in AUGMENT_PRESETS: assert get_augment(name)(x, gen(0)).shape == x.shape
    v = relative_tempo(x, x, gen(0))
    assert v.query.shape == (4, 3, seq.num_frames // 2, 25, seq.num_persons)
