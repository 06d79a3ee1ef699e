"""LaggedPolyLR: the authors' learning rates, iteration by iteration."""

import pytest
import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope
from mmseg.registry import PARAM_SCHEDULERS

from mmseg_dfq.engine import LaggedPolyLR


def authors_rates(base, total, power=0.9):
    """train_feed.py: after step k, lr = base * (1 - k / T) ** power."""
    rates, lr = [], base
    for k in range(total):
        rates.append(lr)  # the rate iteration k runs at
        lr = base * (1 - k / total) ** power
    return rates


def run(scheduler_cfg, steps, epoch_length=None, state=None):
    init_default_scope('mmseg')
    param = torch.nn.Parameter(torch.zeros(1))
    optim = OptimWrapper(torch.optim.Adam([param], lr=5e-4))
    cfg = dict(scheduler_cfg, optimizer=optim)
    if cfg.pop('convert_to_iter_based', False):
        kind = PARAM_SCHEDULERS.get(cfg.pop('type'))
        scheduler = kind.build_iter_from_epoch(
            **cfg, epoch_length=epoch_length
        )
    else:
        scheduler = PARAM_SCHEDULERS.build(cfg)
    if state is not None:
        scheduler.load_state_dict(state)
        optim.param_groups[0]['lr'] = state['_last_value'][0]
    rates = []
    for _ in range(steps):
        rates.append(optim.param_groups[0]['lr'])
        optim.step()
        scheduler.step()
    return rates, scheduler.state_dict()


def test_rates_are_the_authors():
    total = 53 * 4  # 4 epochs of 53 iterations
    cfg = dict(
        type='LaggedPolyLR',
        power=0.9,
        eta_min=0.0,
        begin=0,
        end=4,
        by_epoch=True,
        convert_to_iter_based=True,
    )
    rates, _ = run(cfg, total, epoch_length=53)
    expected = authors_rates(5e-4, total)
    assert rates == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert rates[0] == rates[1] == 5e-4
    assert (
        rates[-1] == pytest.approx(5e-4 * (2 / total) ** 0.9) and rates[-1] > 0
    )
    # mmengine's PolyLR: one iteration ahead and down to 0.
    plain, _ = run(dict(cfg, type='PolyLR'), total, epoch_length=53)
    assert plain[-1] == pytest.approx(0.0, abs=1e-12)
    assert plain[1] < rates[1]


def test_resume_continues_the_same_rates():
    cfg = dict(
        type='LaggedPolyLR', power=0.9, begin=0, end=100, by_epoch=False
    )
    whole, _ = run(cfg, 100)
    first, state = run(cfg, 40)
    rest, _ = run(cfg, 60, state=state)
    assert first + rest == pytest.approx(whole, rel=1e-12)
    assert isinstance(
        PARAM_SCHEDULERS.build(
            dict(
                cfg,
                optimizer=OptimWrapper(
                    torch.optim.SGD(
                        [torch.nn.Parameter(torch.zeros(1))], lr=1.0
                    )
                ),
            )
        ),
        LaggedPolyLR,
    )
