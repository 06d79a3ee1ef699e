"""DomainMetric end to end on SegDataSample dicts, checked against medpy."""

import csv
import math

import numpy as np
import pytest
import torch
from medpy.metric import binary as medpy_binary
from mmengine.evaluator import Evaluator
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample
from scipy import ndimage

from mmseg_dfq.evaluation import DomainMetric, report

# The datasets' METAINFO facts that the metric reads (the contract with
# FundusDGDataset / ProstateDGDataset): the authors' protocols.
FUNDUS_META = dict(
    classes=('background', 'optic_disc_rim', 'optic_cup'),
    structures=dict(OD=(1, 2), OC=(2,)),
    eval_mode='2d',
    post_process=dict(largest_cc=True, fill_holes=True, connectivity=2),
)
PROSTATE_META = dict(
    classes=('background', 'prostate'),
    structures=dict(Prostate=(1,)),
    eval_mode='3d',
    post_process=dict(largest_cc=True, fill_holes=False, connectivity=1),
)


def with_meta(dataset_meta, **kwargs):
    """A metric given its dataset's metainfo, as mmengine's Evaluator does."""
    metric = DomainMetric(**kwargs)
    metric.dataset_meta = dataset_meta
    return metric


def fundus_metric(**kwargs):
    return with_meta(FUNDUS_META, **kwargs)


def prostate_metric(**kwargs):
    return with_meta(PROSTATE_META, **kwargs)


def sample_dict(pred, gt, **meta):
    """A data sample as the Evaluator hands it to ``process``."""
    sample = SegDataSample()
    sample.pred_sem_seg = PixelData(data=torch.from_numpy(pred[None]))
    sample.gt_sem_seg = PixelData(data=torch.from_numpy(gt[None]))
    sample.set_metainfo(meta)
    return sample.to_dict()


def by_hand_lcc(mask, full=False):
    """Largest component by scipy: face or full (``full=True``) structure."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    labels, num = ndimage.label(mask, structure if full else None)
    if num == 0:
        return mask
    return labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1


def fundus_map(rng, size=64):
    """Label map: disc (1) with a cup (2) inside and a stray speck."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(24, 40, size=2)
    r_disc, r_cup = rng.integers(14, 20), rng.integers(5, 9)
    dist = np.hypot(yy - cy, xx - cx + rng.normal(0, 1.5, (size, size)))
    label = np.zeros((size, size), np.int64)
    label[dist < r_disc] = 1
    label[dist < r_cup] = 2
    return label


def test_fundus_two_domains_against_medpy(tmp_path):
    rng = np.random.default_rng(0)
    samples, expected = [], {}
    for domain, idx, seen in (('Domain1', 1, True), ('Domain2', 2, False)):
        per_case = []
        for i in range(3):
            gt = fundus_map(rng)
            pred = fundus_map(rng)
            pred[2:5, 2:5] = 1  # speck removed by the largest component
            pred[30, 30] = 0  # possible hole, filled by post-processing
            if domain == 'Domain2' and i == 0:
                pred[pred == 2] = 1  # no cup predicted -> OC excluded
            samples.append(
                sample_dict(
                    pred,
                    gt,
                    domain=domain,
                    domain_idx=idx,
                    seen=seen,
                    case_id=f'{domain}_{i}',
                    img_path=f'/x/{domain}_{i}.png',
                )
            )
            case = {}
            for name, labels in (('OD', [1, 2]), ('OC', [2])):
                # The authors' fundus protocol: 8-connected component.
                p = ndimage.binary_fill_holes(
                    by_hand_lcc(np.isin(pred, labels), full=True)
                )
                g = np.isin(gt, labels)
                case[f'{name}_Dice'] = 100 * medpy_binary.dc(p, g)
                if p.any() and g.any():
                    case[f'{name}_ASD'] = medpy_binary.asd(p, g)
                    case[f'{name}_HD95'] = medpy_binary.hd95(p, g)
                else:
                    case[f'{name}_ASD'] = case[f'{name}_HD95'] = math.nan
            per_case.append(case)
        expected[domain] = {
            key: np.nanmean([c[key] for c in per_case]) for key in per_case[0]
        }
        expected[domain]['OC_n_excluded'] = sum(
            math.isnan(c['OC_ASD']) for c in per_case
        )

    csv_path = tmp_path / 'cases' / 'fundus.csv'
    # Built and given the dataset's metainfo as the Runner does.
    with DefaultScope.overwrite_default_scope('mmseg'):
        evaluator = Evaluator(
            dict(type='DomainMetric', per_case_file=str(csv_path))
        )
    evaluator.dataset_meta = FUNDUS_META
    metric = evaluator.metrics[0]
    assert list(metric.structures) == ['OD', 'OC'] and metric.mode == '2d'
    metric.process({}, samples[:4])
    metric.process({}, samples[4:])
    results = metric.evaluate(len(samples))

    for domain, values in expected.items():
        assert results[f'{domain}/n_cases'] == 3
        assert results[f'{domain}/OD_n_excluded'] == 0
        for key, value in values.items():
            assert results[f'{domain}/{key}'] == pytest.approx(value), key
    assert results['Domain2/OC_n_excluded'] == 1
    assert results['Domain2/OC_Dice'] < expected['Domain1']['OC_Dice']
    # Dice_avg: the mean of the structures' Dice per domain (the authors'
    # fundus validation score is (OC + OD) / 2 on the target).
    for domain, values in expected.items():
        both = (values['OD_Dice'] + values['OC_Dice']) / 2
        assert results[f'{domain}/Dice_avg'] == pytest.approx(both)
    assert results['mean_unseen/Dice_avg'] == pytest.approx(
        results['Domain2/Dice_avg']
    )
    assert results['mean/Dice_avg'] == pytest.approx(
        (results['Domain1/Dice_avg'] + results['Domain2/Dice_avg']) / 2
    )
    for key in expected['Domain1']:
        if key.endswith('n_excluded'):
            continue
        both = [expected[d][key] for d in ('Domain1', 'Domain2')]
        assert results[f'mean/{key}'] == pytest.approx(np.mean(both))
        assert results[f'mean_unseen/{key}'] == pytest.approx(both[1])
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert rows[0]['distance_unit'] == 'px'
    # Images are not slices: no slice_index column.
    assert list(rows[0])[:4] == ['domain', 'domain_idx', 'seen', 'case_id']
    assert 'slice_index' not in rows[0]
    assert {r['seen'] for r in rows} == {'True', 'False'}


def test_fundus_empty_structures_policy():
    empty = np.zeros((16, 16), np.int64)
    disc = empty.copy()
    disc[4:10, 4:10] = 1
    metric = fundus_metric(metrics=['Dice', 'HD95'])
    meta = dict(domain='D', domain_idx=1, seen=False)
    metric.process(
        {},
        [
            sample_dict(empty, empty, case_id='a', **meta),
            sample_dict(disc, empty, case_id='b', **meta),
        ],
    )
    results = metric.compute_metrics(metric.results)
    # OD: case a perfect (100, 0), case b wrong (0, excluded).
    assert results['D/OD_Dice'] == 50.0
    assert results['D/OD_HD95'] == 0.0
    assert results['D/OD_n_excluded'] == 1
    # OC: both cases empty-empty.
    assert results['D/OC_Dice'] == 100.0 and results['D/OC_HD95'] == 0.0
    # Only unseen domains (the default validation set): mean_unseen is
    # their mean, the same as mean, so that save_best can name it.
    assert results['mean_unseen/OD_Dice'] == results['mean/OD_Dice'] == 50.0


def test_fundus_empty_distance_is_the_authors_penalty(monkeypatch):
    # The authors' fundus test script: a structure predicted empty gets
    # HD95 = ASD = 100 (pixels), counted in the means.
    empty = np.zeros((16, 16), np.int64)
    disc = empty.copy()
    disc[4:10, 4:10] = 1
    shifted = np.roll(disc, 2, axis=1)
    meta = dict(domain='D', domain_idx=1, seen=False)
    samples = [
        sample_dict(empty, disc, case_id='missed', **meta),
        sample_dict(shifted, disc, case_id='found', **meta),
    ]
    found = medpy_binary.hd95(shifted > 0, disc > 0)
    found_asd = medpy_binary.asd(shifted > 0, disc > 0)
    logged = []
    monkeypatch.setattr(
        report, 'print_log', lambda msg, **kwargs: logged.append(msg)
    )
    metric = fundus_metric(metrics=['Dice', 'ASD', 'HD95'], empty_distance=100)
    metric.process({}, samples)
    results = metric.compute_metrics(metric.results)
    assert results['D/OD_HD95'] == pytest.approx((100 + found) / 2)
    assert results['D/OD_ASD'] == pytest.approx((100 + found_asd) / 2)
    assert results['D/OD_n_excluded'] == 0
    assert 'have distance 100' in logged[-1]
    assert 'OD excl.' not in logged[-1]
    # The default leaves the missed case out of the distance means.
    metric = fundus_metric(metrics=['Dice', 'ASD', 'HD95'])
    metric.process({}, samples)
    results = metric.compute_metrics(metric.results)
    assert results['D/OD_HD95'] == pytest.approx(found)
    assert results['D/OD_n_excluded'] == 1
    assert 'OD excl.' in logged[-1]
    for bad in (-1, float('inf'), float('nan'), True, '100'):
        with pytest.raises(ValueError, match='empty_distance'):
            DomainMetric(empty_distance=bad)


def test_a_mean_without_cases_is_nan_and_logged_as_na(monkeypatch):
    # Every case's OD prediction is empty: no OD distance is defined.
    empty = np.zeros((16, 16), np.int64)
    disc = empty.copy()
    disc[4:10, 4:10] = 1
    logged = []
    monkeypatch.setattr(
        report, 'print_log', lambda msg, **kwargs: logged.append(msg)
    )
    metric = fundus_metric(metrics=['Dice', 'HD95'])
    meta = dict(domain='D', domain_idx=1, seen=False)
    metric.process({}, [sample_dict(empty, disc, case_id='a', **meta)])
    results = metric.compute_metrics(metric.results)
    assert math.isnan(results['D/OD_HD95'])
    assert results['D/OD_n_excluded'] == 1
    assert 'n/a' in logged[-1] and 'nan' not in logged[-1]


def test_fundus_dice_smooth_is_the_authors_dice():
    # Their fundus Dice per image: (2 |P & G| + 1) / (|P| + |G| + 1), on
    # the post-processed masks; medpy's exact dc without smoothing.
    rng = np.random.default_rng(3)
    meta = dict(domain='D', domain_idx=1, seen=False)
    gts = [fundus_map(rng) for _ in range(3)]
    preds = [np.roll(g, int(rng.integers(-3, 4)), axis=1) for g in gts]
    preds[2][:] = 0  # predicted empty: theirs gives 1 / (|G| + 1)
    samples = [
        sample_dict(p, g, case_id=f'c{i}', **meta)
        for i, (p, g) in enumerate(zip(preds, gts))
    ]

    def theirs(p, g):
        p, g = p.astype(bool), g.astype(bool)
        return (2.0 * (p & g).sum() + 1.0) / (p.sum() + g.sum() + 1.0)

    post = dict(largest_cc=False, fill_holes=False)
    for smooth, per_case in (
        (1.0, theirs),
        (0.0, lambda p, g: medpy_binary.dc(p, g)),
    ):
        metric = fundus_metric(metrics=['Dice'], dice_smooth=smooth, **post)
        metric.process({}, samples)
        results = metric.compute_metrics(metric.results)
        for name, labels in (('OD', [1, 2]), ('OC', [2])):
            expected = np.mean(
                [
                    per_case(np.isin(p, labels), np.isin(g, labels))
                    for p, g in zip(preds, gts)
                ]
            )
            assert results[f'D/{name}_Dice'] == pytest.approx(100 * expected)
    for bad in (-1, float('nan'), None, True):
        with pytest.raises(ValueError, match='dice_smooth'):
            DomainMetric(dice_smooth=bad)


def prostate_volume(rng, shape, center, radius):
    zz = np.arange(shape[2]) * 3.0
    yy, xx = np.mgrid[: shape[0], : shape[1]] * 0.5
    dist = (
        (yy[..., None] - center[0]) ** 2
        + (xx[..., None] - center[1]) ** 2
        + (zz - center[2]) ** 2
    )
    noise = ndimage.gaussian_filter(rng.normal(0, 8, shape), 1)
    return (dist + noise < radius**2).astype(np.int64)


def prostate_samples(rng, num_cases=2, shape=(40, 44, 8)):
    spacing = (0.5, 0.5, 3.0)
    samples, volumes = [], {}
    for c in range(num_cases):
        gt = prostate_volume(rng, shape, (10, 11, 12), 7)
        pred = prostate_volume(rng, shape, (10.5, 11, 11), 7)
        pred[0:2, 0:2, 0] = 1  # a stray component, removed in 3D
        # Connected to the prostate, on a slice with empty ground truth:
        # kept by the largest component, dropped by restrict_to_gt_slices.
        pred[:, :, 7] = pred[:, :, 6]
        case_id = f'RUNMC/Case{c:02d}'
        volumes[case_id] = (pred, gt)
        for k in range(shape[2]):
            samples.append(
                sample_dict(
                    pred[:, :, k],
                    gt[:, :, k],
                    domain='RUNMC',
                    domain_idx=1,
                    seen=False,
                    case_id=case_id,
                    slice_index=k,
                    num_slices=shape[2],
                    spacing=spacing,
                )
            )
    return samples, volumes, spacing


def run_split(samples, order, **kwargs):
    """Two "ranks" process halves of the shuffled slices; results joined."""
    ranks = [prostate_metric(**kwargs) for _ in range(2)]
    for i, j in enumerate(order):
        ranks[i % 2].process({}, [samples[j]])
    final = prostate_metric(**kwargs)
    return final.compute_metrics(ranks[0].results + ranks[1].results)


def test_prostate_3d_shuffled_slices_against_medpy():
    rng = np.random.default_rng(1)
    samples, volumes, spacing = prostate_samples(rng)
    for pred, gt in volumes.values():
        assert not gt[:, :, 7].any() and pred[:, :, 7].any()
    order = rng.permutation(len(samples))
    kwargs = {}
    results = run_split(samples, order, **kwargs)

    dices, asds, hds = [], [], []
    for pred, gt in volumes.values():
        p = by_hand_lcc(pred.astype(bool))
        dices.append(100 * medpy_binary.dc(p, gt))
        asds.append(medpy_binary.asd(p, gt, spacing))
        hds.append(medpy_binary.hd95(p, gt, spacing))
    assert results['RUNMC/n_cases'] == 2
    assert results['RUNMC/Prostate_Dice'] == pytest.approx(np.mean(dices))
    assert results['RUNMC/Prostate_ASD'] == pytest.approx(np.mean(asds))
    assert results['RUNMC/Prostate_HD95'] == pytest.approx(np.mean(hds))
    assert results['mean/Prostate_Dice'] == results['RUNMC/Prostate_Dice']
    # One structure: its Dice is the domain's number, no Dice_avg.
    assert not any(k.endswith('Dice_avg') for k in results)

    # The opt-in authors' protocol drops predictions on empty-GT slices.
    restricted = run_split(
        samples, order, restrict_to_gt_slices=True, **kwargs
    )
    dices = []
    for pred, gt in volumes.values():
        keep = gt.any(axis=(0, 1))
        p = by_hand_lcc(pred.astype(bool) & keep[None, None, :])
        dices.append(100 * medpy_binary.dc(p, gt))
    assert restricted['RUNMC/Prostate_Dice'] == pytest.approx(np.mean(dices))
    assert restricted['RUNMC/Prostate_Dice'] > results['RUNMC/Prostate_Dice']


def test_prostate_distances_in_voxels_without_spacing():
    # The authors' prostate script calls medpy without a voxel spacing.
    rng = np.random.default_rng(3)
    samples, volumes, spacing = prostate_samples(rng)
    order = rng.permutation(len(samples))
    results = run_split(samples, order, use_spacing=False)
    asds, hds = [], []
    for pred, gt in volumes.values():
        p = by_hand_lcc(pred.astype(bool))
        asds.append(medpy_binary.asd(p, gt))
        hds.append(medpy_binary.hd95(p, gt))
    assert results['RUNMC/Prostate_ASD'] == pytest.approx(np.mean(asds))
    assert results['RUNMC/Prostate_HD95'] == pytest.approx(np.mean(hds))
    in_mm = run_split(samples, order)
    assert in_mm['RUNMC/Prostate_HD95'] != pytest.approx(np.mean(hds))


def test_prostate_3d_missing_or_duplicated_slice_raises():
    rng = np.random.default_rng(2)
    samples, _, _ = prostate_samples(rng, num_cases=1, shape=(12, 12, 8))
    kwargs = {}
    with pytest.raises(ValueError, match=r'Case00.*missing \[3\]'):
        run_split(samples[:3] + samples[4:], range(7), **kwargs)
    with pytest.raises(ValueError, match=r'Case00.*duplicated \[1\]'):
        run_split(samples + samples[1:2], range(9), **kwargs)
    metric = prostate_metric()
    bad = dict(samples[0])
    del bad['slice_index']
    with pytest.raises(KeyError, match='slice_index'):
        metric.process({}, [bad])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match='mode'):
        DomainMetric(mode='volume')
    with pytest.raises(ValueError, match='metrics'):
        DomainMetric(metrics=['Dice', 'IoU'])
    with pytest.raises(ValueError, match='restrict_to_gt_slices'):
        DomainMetric(mode='2d', restrict_to_gt_slices=True)
    with pytest.raises(ValueError, match='restrict_to_gt_slices'):
        fundus_metric(restrict_to_gt_slices=True)
    with pytest.raises(ValueError, match='structure'):
        DomainMetric(structures=dict(OD=[]))


def test_settings_come_from_the_dataset_unless_given():
    label = np.zeros((12, 12), np.int64)
    label[2:8, 2:8] = 1
    sample = sample_dict(
        label, label, domain='D', domain_idx=1, seen=True, case_id='a'
    )
    # No fundus default: nothing given and no dataset metainfo.
    bare = DomainMetric()
    with pytest.raises(KeyError, match=r'structures is not set.*METAINFO'):
        bare.process({}, [sample])
    # A dataset without the facts is reported when the Runner hands the
    # metainfo over, naming the missing key.
    with pytest.raises(KeyError, match=r"dataset_meta\['eval_mode'\]"):
        with_meta(dict(classes=('a', 'b'), structures=dict(A=[1])))
    no_post = dict(FUNDUS_META)
    del no_post['post_process']
    with pytest.raises(
        KeyError, match=r"largest_cc.*dataset_meta\['post_process'\]"
    ):
        with_meta(no_post)
    with pytest.raises(
        ValueError, match=r"'OD' \(dataset_meta\['structures'\]\)"
    ):
        with_meta(dict(FUNDUS_META, structures=dict(OD=())))
    with pytest.raises(ValueError, match=r"mode \(dataset_meta\['eval_mode"):
        with_meta(dict(FUNDUS_META, eval_mode='volume'))
    # ...but arguments fill in what the dataset lacks, and override it.
    given = with_meta(
        no_post, largest_cc=False, cc_connectivity=1, fill_holes=False
    )
    assert given.post_process.connectivity == 1
    assert not given.post_process.largest_cc
    one = fundus_metric(structures=dict(Disc=[1, 2]), mode='2d')
    assert list(one.structures) == ['Disc']
    one.process({}, [sample])
    results = one.compute_metrics(one.results)
    assert results['D/Disc_Dice'] == 100.0 and 'D/OD_Dice' not in results
    # Fully given, no dataset needed (direct use).
    direct = DomainMetric(
        structures=dict(Prostate=[1]),
        mode='3d',
        largest_cc=True,
        cc_connectivity=1,
        fill_holes=False,
    )
    assert direct.mode == '3d' and direct.post_process.connectivity == 1
    with pytest.raises(ValueError, match='cc_connectivity'):
        DomainMetric(
            structures=dict(OD=[1]),
            mode='2d',
            largest_cc=True,
            cc_connectivity=3,
            fill_holes=True,
        )
    # The prostate facts: 3D volumes, 6-connected, no hole filling.
    prostate = prostate_metric()
    assert prostate.mode == '3d' and prostate.structures == {'Prostate': [1]}
    assert prostate.post_process.connectivity == 1
    assert not prostate.post_process.fill_holes


def test_3d_fill_holes_per_slice_and_2d_spacing(tmp_path):
    csv_path = tmp_path / 'slices.csv'
    gt = np.zeros((16, 16, 3), np.int64)
    gt[4:12, 4:12, :] = 1
    pred = gt.copy()
    pred[7:9, 7:9, 1] = 0  # an in-plane hole, open along the slice axis
    meta = dict(domain='BIDMC', domain_idx=2, seen=True, num_slices=3)
    samples = [
        sample_dict(
            pred[:, :, k],
            gt[:, :, k],
            case_id='BIDMC/Case00',
            slice_index=k,
            spacing=(0.6, 0.6, 3.0),
            **meta,
        )
        for k in range(3)
    ]
    default = prostate_metric()  # authors' prostate protocol: no fill
    default.process({}, samples)
    hole_dice = 100 * medpy_binary.dc(pred, gt)
    assert default.compute_metrics(default.results)[
        'BIDMC/Prostate_Dice'
    ] == pytest.approx(hole_dice)
    filled = prostate_metric(fill_holes=True)  # an argument wins
    filled.process({}, samples)
    assert filled.compute_metrics(filled.results)['BIDMC/Prostate_Dice'] == (
        100.0
    )

    # 2D mode on slices: in-plane spacing (first two values) gives mm.
    flat = prostate_metric(mode='2d', per_case_file=str(csv_path))
    flat.process({}, samples[1:2])
    results = flat.compute_metrics(flat.results)
    # Slices as cases: the CSV names the slice of the volume.
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [(r['case_id'], r['slice_index']) for r in rows] == [
        ('BIDMC/Case00', '1')
    ]
    assert rows[0]['distance_unit'] == 'mm'
    expected = medpy_binary.hd95(pred[:, :, 1], gt[:, :, 1], (0.6, 0.6))
    assert results['BIDMC/Prostate_HD95'] == pytest.approx(expected)
    # Mixing cases with and without spacing would mix units.
    plain = dict(samples[0])
    del plain['spacing']
    flat.process({}, [plain])
    with pytest.raises(ValueError, match='mm and pixels'):
        flat.compute_metrics(flat.results)


def test_fundus_component_is_8_connected_prostate_6_connected():
    # A big square and a small one touching it only at a corner: one
    # component with 8-connectivity (the authors' skimage default for
    # fundus), two with 4 (the small one would be dropped).
    label = np.zeros((24, 24), np.int64)
    label[3:13, 3:13] = 1
    label[13:17, 13:17] = 1
    gt = label.copy()
    full = ndimage.generate_binary_structure(2, 2)
    _, num_full = ndimage.label(label > 0, full)
    _, num_face = ndimage.label(label > 0)
    assert (num_full, num_face) == (1, 2)
    meta = dict(domain='D', domain_idx=1, seen=True, case_id='a')
    results = {}
    for connectivity in (None, 1, 2):
        metric = fundus_metric(
            structures=dict(OD=[1]), cc_connectivity=connectivity
        )
        metric.process({}, [sample_dict(label, gt, **meta)])
        results[connectivity] = metric.compute_metrics(metric.results)
    kept_full = by_hand_lcc(label > 0, full=True)
    kept_face = by_hand_lcc(label > 0)
    assert results[None]['D/OD_Dice'] == 100 * medpy_binary.dc(kept_full, gt)
    assert results[None]['D/OD_Dice'] == 100.0
    assert results[2] == results[None]
    assert results[1]['D/OD_Dice'] == pytest.approx(
        100 * medpy_binary.dc(kept_face, gt)
    )
    assert results[1]['D/OD_Dice'] < 100.0

    # 3D (prostate): face connectivity by default, so a blob touching the
    # organ along an edge only is a separate component and is dropped.
    vol = np.zeros((12, 12, 4), np.int64)
    vol[2:8, 2:8, 0:3] = 1
    vol[8:10, 8:10, 3] = 1  # shares an edge-neighbour corner only
    _, num_face = ndimage.label(vol > 0)
    _, num_full = ndimage.label(
        vol > 0, ndimage.generate_binary_structure(3, 3)
    )
    assert (num_face, num_full) == (2, 1)
    samples = [
        sample_dict(
            vol[:, :, k],
            vol[:, :, k],
            domain='RUNMC',
            domain_idx=1,
            seen=False,
            case_id='RUNMC/Case00',
            slice_index=k,
            num_slices=4,
        )
        for k in range(4)
    ]
    dices = {}
    for connectivity in (None, 3):
        metric = prostate_metric(cc_connectivity=connectivity)
        metric.process({}, samples)
        dices[connectivity] = metric.compute_metrics(metric.results)[
            'RUNMC/Prostate_Dice'
        ]
    assert dices[None] == pytest.approx(
        100 * medpy_binary.dc(by_hand_lcc(vol > 0), vol)
    )
    assert dices[None] < 100.0 and dices[3] == 100.0
    with pytest.raises(ValueError, match='cc_connectivity'):
        fundus_metric(cc_connectivity=3)


def test_2d_duplicated_case_raises_3d_same_id_in_two_domains_is_two_cases():
    label = np.zeros((10, 10), np.int64)
    label[2:6, 2:6] = 1
    meta = dict(domain='Domain1', domain_idx=1, seen=True, case_id='x')
    metric = fundus_metric()
    metric.process(
        {},
        [
            sample_dict(label, label, img_path='/d/a/x.png', **meta),
            sample_dict(label, label, img_path='/d/b/x.png', **meta),
        ],
    )
    with pytest.raises(ValueError, match=r'Domain1/x x2.*a/x\.png.*b/x\.png'):
        metric.compute_metrics(metric.results)
    # The same id in another domain is another case.
    ok = fundus_metric()
    other = dict(meta, domain='Domain2', domain_idx=2)
    ok.process({}, [sample_dict(label, label, **meta)])
    ok.process({}, [sample_dict(label, label, **other)])
    results = ok.compute_metrics(ok.results)
    assert results['Domain1/n_cases'] == results['Domain2/n_cases'] == 1

    # 3D: volumes with one id in two domains and different slice counts.
    samples = []
    for domain, idx, num in (('BMC', 2, 3), ('HK', 6, 5)):
        for k in range(num):
            samples.append(
                sample_dict(
                    label,
                    label,
                    domain=domain,
                    domain_idx=idx,
                    seen=False,
                    case_id='Case00',
                    slice_index=k,
                    num_slices=num,
                )
            )
    metric = prostate_metric(structures=dict(Prostate=[1]))
    metric.process({}, samples)
    results = metric.compute_metrics(metric.results)
    assert results['BMC/n_cases'] == results['HK/n_cases'] == 1
    assert results['mean/Prostate_Dice'] == 100.0


def _read_png(path):
    from PIL import Image

    return np.array(Image.open(path))


def test_output_dir_names_and_writes_predictions_as_iou_metric(tmp_path):
    """mmseg's test.py --out: output_dir (and keep_results) as IoUMetric."""
    rng = np.random.default_rng(3)
    images = []
    for domain, idx, seen in (('Domain1', 1, False), ('Domain2', 2, True)):
        for i in range(2):
            images.append(
                sample_dict(
                    fundus_map(rng, 32),
                    fundus_map(rng, 32),
                    domain=domain,
                    domain_idx=idx,
                    seen=seen,
                    case_id=f'{domain[-1]}img{i}',
                    img_path=f'/data/{domain}/test/{domain[-1]}img{i}.png',
                )
            )
    ours, theirs = tmp_path / 'ours', tmp_path / 'iou'
    with DefaultScope.overwrite_default_scope('mmseg'):
        # What mmseg's tools/test.py --out sets on the test evaluator.
        evaluator = Evaluator(
            dict(type='DomainMetric', output_dir=str(ours), keep_results=True)
        )
        iou = Evaluator(dict(type='IoUMetric', output_dir=str(theirs)))
    evaluator.dataset_meta = iou.dataset_meta = FUNDUS_META
    evaluator.process(images)
    iou.process(images)
    results = evaluator.evaluate(len(images))
    # The metrics are those of a metric without output_dir.
    plain = fundus_metric()
    plain.process({}, images)
    assert results == pytest.approx(
        plain.compute_metrics(plain.results), nan_ok=True
    )
    # IoUMetric's names and pixels, in one folder per domain.
    names = sorted(str(p.relative_to(ours)) for p in ours.rglob('*.png'))
    assert names == [
        f'Domain{d}/{d}img{i}.png' for d in '12' for i in range(2)
    ]
    assert [n.split('/')[1] for n in names] == sorted(
        p.name for p in theirs.iterdir()
    )
    for sample, name in zip(images, names):
        pred = sample['pred_sem_seg']['data'][0].numpy()
        written = _read_png(ours / name)
        assert written.dtype == np.uint8
        np.testing.assert_array_equal(written, pred)
        np.testing.assert_array_equal(
            written, _read_png(theirs / name.split('/')[1])
        )

    # Volume slices: img_path is the whole volume; one PNG per slice,
    # named after case and slice, volumes of one name in two domains apart.
    slices = []
    for domain, idx in (('RUNMC', 1), ('BMC', 2)):
        for k in range(3):
            label = np.full((8, 8), k % 2, np.int64)
            label[0, 0] = idx
            slices.append(
                sample_dict(
                    label,
                    label,
                    domain=domain,
                    domain_idx=idx,
                    seen=idx == 2,
                    case_id=f'{domain}/Case00',
                    img_path=f'/data/{domain}/Case00.nii.gz',
                    slice_index=k,
                    num_slices=3,
                )
            )
    metric = prostate_metric(output_dir=str(tmp_path / 'vol'))
    metric.process({}, slices)
    metric.compute_metrics(metric.results)
    vol = tmp_path / 'vol'
    names = sorted(str(p.relative_to(vol)) for p in vol.rglob('*.png'))
    assert names == sorted(
        f'{d}/Case00_{k:03d}.png' for d in ('RUNMC', 'BMC') for k in range(3)
    )
    for sample in slices:
        name = f'{sample["case_id"]}_{sample["slice_index"]:03d}.png'
        np.testing.assert_array_equal(
            _read_png(tmp_path / 'vol' / name),
            sample['pred_sem_seg']['data'][0].numpy(),
        )


def test_format_only_writes_predictions_without_metrics(tmp_path, monkeypatch):
    """IoUMetric's format_only: no ground truth read, no metric returned."""
    from mmseg_dfq.evaluation import domain_metric

    label = np.zeros((6, 6), np.int64)
    label[1:4, 1:4] = 2
    sample = SegDataSample()
    sample.pred_sem_seg = PixelData(data=torch.from_numpy(label[None]))
    # No gt_sem_seg and no domain meta keys (a test set without masks).
    sample.set_metainfo(dict(img_path='/in/a/x.png'))
    logged = []
    monkeypatch.setattr(
        domain_metric, 'print_log', lambda msg, **kw: logged.append(msg)
    )
    with DefaultScope.overwrite_default_scope('mmseg'):
        evaluator = Evaluator(
            dict(
                type='DomainMetric',
                output_dir=str(tmp_path / 'out'),
                format_only=True,
            )
        )
    # A dataset without the metric's facts is fine: nothing is measured.
    evaluator.dataset_meta = dict(classes=('bg', 'a', 'b'))
    evaluator.process([sample.to_dict()])
    assert evaluator.evaluate(1) == {}
    np.testing.assert_array_equal(_read_png(tmp_path / 'out' / 'x.png'), label)
    assert any('1 predictions are saved to' in m for m in logged), logged


def test_prediction_names_shared_by_two_samples_are_reported(
    tmp_path, monkeypatch
):
    from mmseg_dfq.evaluation import domain_metric

    logged = []
    monkeypatch.setattr(
        domain_metric, 'print_log', lambda msg, **kw: logged.append(msg)
    )
    label = np.zeros((6, 6), np.int64)
    label[1:4, 1:4] = 1
    metric = fundus_metric(output_dir=str(tmp_path))
    # One domain, two folders with a file of one name: one PNG name.
    metric.process(
        {},
        [
            sample_dict(
                label,
                label,
                domain='Domain1',
                domain_idx=1,
                seen=True,
                case_id=f'{folder}/x',
                img_path=f'/d/Domain1/{folder}/x.png',
            )
            for folder in ('a', 'b')
        ],
    )
    metric.compute_metrics(metric.results)
    (message,) = [m for m in logged if 'more than one sample' in m]
    assert 'x.png' in message and '/d/Domain1/a/x.png' in message
    assert '/d/Domain1/b/x.png' in message
